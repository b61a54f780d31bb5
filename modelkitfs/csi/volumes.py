"""Publishing and unpublishing volumes: the Node service's work, without gRPC.

A volume that asks for the kit as the node service shows it (no filter, no index labels, no
credentials of its own, the plugin's own plain-HTTP and timeout settings) is the node service's
kit folder bound read-only at the target: the tag resolved once, the bind pinned to the
digest, so a moved tag never changes a running pod's files. Any other volume is a ``mount`` of
its own at the target, over the same cache, with the secrets' credentials given to its daemon
in its environment (never its command line or a file), each entry for its own host only.

A publish or an unpublish runs in a thread of its own (:mod:`modelkitfs.primitives.calls`)
and answers within its deadline, whatever the node service does: one that ends after its caller
gave up undoes what it mounted. Unpublishing never looks into the folder it takes off (a stopped
node service would not answer). Every failure is a :class:`VolumeError` carrying the gRPC
status code the CSI spec asks for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from functools import partial

import trio

from modelkitfs.csi.binds import Target, bind_read_only, state, unmount
from modelkitfs.csi.node_service import NodeService
from modelkitfs.csi.records import OWN, SHARED, Record, Records
from modelkitfs.csi.volume_spec import (
    InvalidVolume,
    Login,
    VolumeSpec,
    parse_volume,
    service_path,
)
from modelkitfs.errors import (
    AuthenticationError,
    InvalidFilter,
    InvalidReference,
    ModelKitFSError,
    NotAModelKit,
    NotFound,
    RegistryError,
    SelectionError,
)
from modelkitfs.mount import DaemonError, mount
from modelkitfs.primitives.calls import Call, Calls, NoAnswer
from modelkitfs.reference import DEFAULT_REGISTRY, parse_reference
from modelkitfs.registry import RegistryClient
from modelkitfs.registry.credentials import find_credential
from modelkitfs.session.options import FLAG_SIGNERS, MountOptions
from modelkitfs.signing import PolicyError, verify_digest

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0  # seconds the registry is given to say why a kit could not be shown
CALL_TIMEOUT = 180.0  # seconds a publish or unpublish may take when its caller sets no deadline
ERRNO_CODES = {
    errno.ENOENT: "NOT_FOUND",
    errno.EACCES: "PERMISSION_DENIED",
    errno.EPERM: "PERMISSION_DENIED",
}


class VolumeError(ModelKitFSError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # a grpc.StatusCode name


def code_of(error: ModelKitFSError) -> str:
    if isinstance(error, VolumeError):
        return error.code
    kind = error.kind if isinstance(error, DaemonError) else type(error)  # a daemon's, by kind
    if issubclass(kind, (InvalidVolume, InvalidReference, InvalidFilter)):
        return "INVALID_ARGUMENT"
    if issubclass(kind, (NotFound, NotAModelKit, SelectionError)):
        return "NOT_FOUND"
    if issubclass(kind, AuthenticationError):
        return "PERMISSION_DENIED"
    if issubclass(kind, RegistryError):
        return "UNAVAILABLE"
    return "INTERNAL"


class Volumes:
    def __init__(self, records: Records, service: NodeService, options: MountOptions) -> None:
        self.records = records
        self.service = service
        self.options = options
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.calls = Calls()

    @contextlib.contextmanager
    def _locked(self, target: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(target, threading.Lock())
        with lock:
            yield

    def recover(self) -> None:
        """After a restart: what is published (the records), and what of it still serves."""
        for record in self.records.all():
            now = state(record.target_path)
            log.info(
                "volume %s at %s (%s): %s",
                record.volume_id,
                record.target_path,
                record.how,
                now.value,
            )

    # --- publish ----------------------------------------------------------------------------

    def publish(
        self,
        volume_id: str,
        target: str,
        context: dict[str, str],
        secrets: dict[str, str],
        seconds: float = CALL_TIMEOUT,
    ) -> None:
        if not volume_id or not target:
            raise VolumeError("INVALID_ARGUMENT", "the request needs a volume_id and a target_path")
        if not os.path.isabs(target):
            raise VolumeError("INVALID_ARGUMENT", f"target_path {target!r} is not absolute")
        spec, login, pod = parse_volume(context, secrets)
        work = partial(self._publish, volume_id, target, spec, login, pod)
        try:
            how = self.calls.run(seconds, f"publishing {spec.reference} at {target}", work)
        except NoAnswer as exc:
            raise VolumeError(
                "DEADLINE_EXCEEDED", f"{exc}: what it mounts later is undone; try again"
            ) from None
        log.info(
            "published %s (%s) at %s for pod %s/%s",
            spec.reference,
            how,
            target,
            pod.get("pod.namespace", "?"),
            pod.get("pod.name", "?"),
        )

    def _publish(
        self,
        volume_id: str,
        target: str,
        spec: VolumeSpec,
        login: Login | None,
        pod: dict[str, str],
        call: Call[str],
    ) -> str:
        """How the volume is published, once it is (in a thread of ``call``'s)."""
        with self._locked(target):
            existing = self.records.get(target)
            now = state(target)
            if existing is not None:
                if existing.volume_id != volume_id or existing.spec != spec.as_dict():
                    raise VolumeError(
                        "ALREADY_EXISTS",
                        f"{target} is published as volume {existing.volume_id} of "
                        f"{existing.spec['reference']}, with other attributes: unpublish it first",
                    )
                if now is Target.MOUNTED:
                    return existing.how  # published already: the same call again succeeds
                if now is Target.DEAD:
                    unmount(target)
            elif now in (Target.MOUNTED, Target.DEAD):
                raise VolumeError(
                    "ALREADY_EXISTS", f"something else is mounted at {target}: unmount it first"
                )
            os.makedirs(target, exist_ok=True)
            record = Record(volume_id, target, spec.as_dict(), OWN, pod=pod)
            if self._shares(spec):
                record.how, record.source = SHARED, self._kit_folder(spec, login)
            self.records.put(record)  # before mounting: a crash in between is redone
            try:
                if record.how == SHARED:
                    bind_read_only(record.source, target)
                else:
                    self._mount_own(spec, login, target)
            except BaseException:
                self.records.delete(target)
                raise
            if not call.keep():
                log.warning("%s ended after its caller gave up: undone", call.what)
                self._take_off(target)
            return record.how

    def _shares(self, spec: VolumeSpec) -> bool:
        return (
            not spec.filters
            and not spec.labels
            and not spec.credentials
            and spec.plain_http in (None, self.options.plain_http)
            and spec.timeout in (None, self.options.timeout)
            and not spec.signers
        )

    def _volume_options(self, spec: VolumeSpec) -> MountOptions:
        options = self.options.replace(
            filters=list(spec.filters),
            labels=list(spec.labels),
            plain_http=self.options.plain_http if spec.plain_http is None else spec.plain_http,
            timeout=spec.timeout or self.options.timeout,
            allow_other=True,  # the pod's processes run as any user
            prefetch="none",
        )
        if not spec.signers:
            return options
        # A volume's signers are a rule of their own beside the node's policy file: both
        # must pass. Signers the node names by flags would be replaced: never.
        if any(getattr(self.options, name) for name in FLAG_SIGNERS):
            raise InvalidVolume(
                "volume attributes 'verifyKey' and 'certificateIdentity' add signers to the "
                "node's --policy file; this node names its signers by flags, which a volume "
                "cannot change: leave them out, or ask the operator for a --policy file"
            )
        try:
            return options.replace(**spec.signers)
        except PolicyError as exc:
            raise InvalidVolume(f"the volume's signers: {exc}") from None

    def _kit_folder(self, spec: VolumeSpec, login: Login | None) -> str:
        """The node service's folder of the kit, pinned by digest; looking it up loads the kit
        (its manifest and config, nothing more)."""
        try:
            self.service.ensure()
        except ModelKitFSError as exc:
            raise VolumeError("UNAVAILABLE", str(exc)) from None
        path = os.path.join(self.service.root, service_path(spec.reference))
        try:
            os.stat(path)
        except OSError as exc:
            code = ERRNO_CODES.get(exc.errno or 0, "UNAVAILABLE")
            raise self._diagnosed(
                spec,
                login,
                VolumeError(code, f"the node service cannot show {spec.reference}: {exc.strerror}"),
            ) from None
        folder = os.path.realpath(path)
        root = os.path.realpath(self.service.root)
        if os.path.commonpath([root, folder]) != root or folder == root:
            raise VolumeError(  # parse_volume lets no such reference through: never bind it
                "INVALID_ARGUMENT", f"{spec.reference} names no kit folder under {root}"
            )
        return folder

    def _mount_own(self, spec: VolumeSpec, login: Login | None, target: str) -> None:
        environment = login.environment() if login is not None else None
        try:
            mount(spec.reference, target, self._volume_options(spec), environment=environment)
        except ModelKitFSError as exc:
            raise self._diagnosed(spec, login, exc) from None

    def _diagnosed(
        self, spec: VolumeSpec, login: Login | None, error: ModelKitFSError
    ) -> VolumeError:
        """Why the kit could not be shown, as the registry tells it when asked for the
        manifest once more (a daemon reports only its message); else ``error`` itself."""
        reference = parse_reference(spec.reference)
        if reference.registry != DEFAULT_REGISTRY:
            options = self._volume_options(spec)
            options = options.replace(timeout=min(options.timeout, PROBE_TIMEOUT))
            found = _probe(
                reference.registry, reference.repository, reference.identifier, options, login
            )
            if found is not None:
                code = code_of(found)
                if code == "PERMISSION_DENIED" and login is None:
                    return VolumeError(
                        code,
                        f"{spec.reference}: registry {reference.registry} requires login: give "
                        "the volume a nodePublishSecretRef with 'username' and 'password' (or "
                        "a .dockerconfigjson)",
                    )
                return VolumeError(code, f"{spec.reference}: {found}")
        # The daemon's own reason (a kit its model.path names, say), else the service's.
        message = f"{spec.reference}: {error}" if isinstance(error, DaemonError) else str(error)
        return VolumeError(code_of(error), message)

    # --- unpublish --------------------------------------------------------------------------

    def unpublish(self, volume_id: str, target: str, seconds: float = CALL_TIMEOUT) -> None:
        if not volume_id or not target:
            raise VolumeError("INVALID_ARGUMENT", "the request needs a volume_id and a target_path")
        work = partial(self._unpublish, volume_id, target)
        try:
            self.calls.run(seconds, f"unpublishing {target}", work)
        except NoAnswer as exc:
            raise VolumeError("DEADLINE_EXCEEDED", f"{exc}; try again") from None
        log.info("unpublished volume %s from %s", volume_id, target)

    def _unpublish(self, volume_id: str, target: str, call: Call[None]) -> None:
        with self._locked(target):
            record = self.records.get(target)
            if record is not None and record.volume_id != volume_id:
                raise VolumeError(
                    "NOT_FOUND", f"{target} holds volume {record.volume_id}, not {volume_id}"
                )
            self._take_off(target)

    def _take_off(self, target: str) -> None:
        """Unmount ``target`` (without a look inside: its server may not answer), remove the
        folder and the record."""
        unmount(target)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(target)
        self.records.delete(target)


def _probe(
    registry: str,
    repository: str,
    identifier: str,
    options: MountOptions,
    login: Login | None,
) -> ModelKitFSError | None:
    """What the registry answers for the manifest, and why the signature policy refuses it:
    None when it serves it and the policy (if any) trusts it."""

    async def ask() -> None:
        client = RegistryClient(
            registry,
            options.network(registry),
            credentials=login.credential if login is not None else find_credential,
        )
        try:
            manifest = await client.get_manifest(repository, identifier)
            if (policy := options.signature_policy()) is not None:
                name = f"{registry}/{repository}"
                await verify_digest(client, name, repository, manifest.digest, policy)
        finally:
            await client.aclose()

    try:
        trio.run(ask)
    except ModelKitFSError as exc:
        return exc
    return None
