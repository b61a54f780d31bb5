"""Mount and unmount ModelKits: the Python API (the CLI is a thin shell over it).

>>> import modelkitfs
>>> with modelkitfs.mount("registry.example/team/llm:v1", plain_http=True) as root:
...     weights = (root / "model.safetensors").read_bytes()   # a temporary mountpoint
>>> modelkitfs.mount("registry.example/team/llm:v1", "/mnt/llm")   # stays mounted
>>> modelkitfs.unmount("/mnt/llm")
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import setproctitle
import trio

from modelkitfs import errors
from modelkitfs.cache import (
    DiskCache,
    advice,
    default_cache_dir,
    describe,
    make_folders,
    settle_cap,
)
from modelkitfs.daemon.answers import ANSWER_TIMEOUT, DEAD_MOUNT, FSTYPE, ask, silence
from modelkitfs.daemon.process import configure_logging, log_path, process_title
from modelkitfs.daemon.service import SERVICE, serve_kits
from modelkitfs.daemon.serving import serve_modelkit
from modelkitfs.errors import ModelKitFSError, MountError
from modelkitfs.primitives.calls import NoAnswer
from modelkitfs.primitives.mountinfo import MountEntry, busy_holders, mount_above, mount_entry
from modelkitfs.reference import parse_reference
from modelkitfs.registry.credentials import pair_registry
from modelkitfs.session.options import MountOptions, merged_options

log = logging.getLogger(__name__)

READY_TIMEOUT = 180.0
MAX_HOLDERS_NAMED = 5
DAEMON_ENTRY = "import sys; from modelkitfs.daemon.process import main; sys.exit(main())"


class DaemonError(MountError):
    """The daemon's own error, through its pipe: ``kind`` is the error's class (a kit not found,
    a login refused), for those who answer by kind (the CSI plugin's codes)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        found = getattr(errors, kind, None)
        self.kind = (
            found if isinstance(found, type) and issubclass(found, ModelKitFSError) else MountError
        )


def check_mountpoint(mountpoint: str | os.PathLike[str]) -> str:
    """The absolute mountpoint, or :class:`MountError` saying why it cannot be used (also
    when it is, or is in, a mount whose daemon does not answer)."""
    path = os.path.abspath(mountpoint)
    try:
        ask(f"looking at mountpoint {path}", partial(_check_folder, path))
    except NoAnswer:
        # The path may pass through links, so the mount above it in the table may not be
        # the one that hangs: only a FUSE mount (whose daemon may be stopped) is named.
        stuck = mount_above(path)
        why = (
            silence(stuck).describe()
            if stuck is not None and stuck.fstype.startswith("fuse")
            else "a file system on the way to it does not answer (see 'modelkitfs mounts')"
        )
        raise MountError(f"cannot use mountpoint {path}: {why}") from None
    return path


def _check_folder(path: str) -> None:
    """What :func:`check_mountpoint` asks of the folder itself (a FUSE daemon may answer)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise MountError(
            f"mountpoint {path} does not exist: create it with 'mkdir -p {path}'"
        ) from None
    except OSError as exc:
        if exc.errno in DEAD_MOUNT:
            raise MountError(
                f"{path} is a dead mount (its daemon has stopped): clean it up with "
                f"'modelkitfs umount {path}'"
            ) from None
        raise MountError(f"cannot use mountpoint {path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory: choose an empty directory")
    if os.path.ismount(path):
        raise MountError(
            f"{path} is already a mount point: unmount it first with 'modelkitfs umount {path}'"
        )
    if any(os.scandir(path)):
        raise MountError(
            f"mountpoint {path} is not empty: mount on an empty directory (a mount would hide "
            "its contents)"
        )


def _prepare(
    reference: str | None, mountpoint: str | os.PathLike[str], options: MountOptions | None
) -> tuple[str, str, MountOptions]:
    """A kit's reference (None: the node service), the checked mountpoint and options."""
    ref = parse_reference(reference) if reference is not None else None
    options = options or MountOptions()
    options.check()
    path = check_mountpoint(mountpoint)
    options = options.replace(cache_dir=os.path.abspath(options.cache_dir or default_cache_dir()))
    _check_cache(options)
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is missing: install FUSE 3 (apt-get install fuse3)")
    if ref is None:
        return SERVICE, path, options
    return (str(ref) if ref.is_layout else str(reference)), path, options


def daemon_log(cache_dir: str) -> tuple[Path, OSError | None]:
    """Where a daemon logs: in the cache, or, when that cannot be written, in a folder of
    this user's under the temporary directory; with the cache's fault."""
    path = log_path(cache_dir)
    try:
        make_folders(path.parent)  # the cache's folders are its owner's alone
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        return path, None
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"modelkitfs-{os.getuid()}" / path.name
        fallback.parent.mkdir(mode=0o700, exist_ok=True)
        return fallback, exc


def _check_cache(options: MountOptions) -> None:
    """A cache that cannot be written does not stop a mount (reads are served uncached): one
    warning says so. One that can has its size cap settled now, so that a cap the cache will
    not take is reported here, not only in the daemon's log."""
    cache_dir = options.cache_dir or ""
    where, fault = daemon_log(cache_dir)
    if fault is not None:
        log.warning(
            "cache %s cannot be written (%s): the mount serves reads uncached and logs to %s; %s",
            cache_dir,
            describe(fault),
            where,
            advice(Path(cache_dir), fault),
        )
        return
    cache = DiskCache(cache_dir)
    _, warning = settle_cap(cache, options.cache_max_size)
    cache.process.release()
    if warning:
        log.warning("%s", warning)


class Mount:
    """A mounted kit: :attr:`path` is its folder. As a context manager it yields the path and
    unmounts on exit, also after an exception (and removes a temporary mountpoint)."""

    def __init__(self, path: Path, temporary: bool) -> None:
        self.path = path
        self.temporary = temporary

    def unmount(self) -> None:
        try:
            unmount(self.path)
        except MountError:
            try:  # the table, then resolved links: a stopped daemon never answers those
                gone = ask(f"finding {self.path}", partial(mount_entry, str(self.path))) is None
            except NoAnswer:
                gone = False  # something on the way does not answer: still mounted
            if gone:
                raise
            unmount(self.path, lazy=True)  # still busy: detach now, the daemon ends later
        if self.temporary:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"Mount({str(self.path)!r})"


def mount(
    reference: str,
    mountpoint: str | os.PathLike[str] | None = None,
    options: MountOptions | None = None,
    *,
    environment: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Mount:
    """Mount ``reference`` with a daemon in the background, at ``mountpoint`` or else at a new
    temporary folder; return once the folder is mounted, or raise a
    :class:`~modelkitfs.errors.ModelKitFSError` with nothing left mounted. ``overrides`` are
    :class:`MountOptions` fields (``plain_http=True``, ``cache_dir=...``, ``filters=[...]``);
    ``environment`` adds variables to the daemon's environment (credentials such as
    ``MODELKITFS_AUTH_CONFIG``, kept off its command line). ``$MODELKITFS_USERNAME`` and
    ``$MODELKITFS_PASSWORD`` are for the registry of ``reference`` alone, unless
    ``$MODELKITFS_REGISTRY`` names another."""
    options = merged_options(options, overrides)
    environment = {**pair_registry(reference), **(environment or {})}
    temporary = mountpoint is None
    if mountpoint is None:
        mountpoint = tempfile.mkdtemp(prefix="modelkitfs-")
    try:
        _start_daemon(reference, mountpoint, options, environment)
    except BaseException:
        if temporary:
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)
        raise
    return Mount(Path(os.path.abspath(mountpoint)), temporary)


def _start_daemon(
    reference: str | None,
    mountpoint: str | os.PathLike[str],
    options: MountOptions,
    environment: Mapping[str, str] | None = None,
    service: Mapping[str, float] | None = None,
) -> None:
    """Start a daemon serving ``reference`` (None: every kit, with ``service``'s settings)."""
    reference, path, options = _prepare(reference, mountpoint, options)
    where = daemon_log(options.cache_dir or "")[0]
    # Through a pipe, not the command line: every user can read a process's arguments.
    arguments: dict[str, Any] = {
        "reference": reference,
        "mountpoint": path,
        "options": options,
        "log": str(where),
    }
    if service is not None:
        arguments["service"] = {**service, "log_file": str(where)}
    with open(where, "ab") as log_file:
        daemon = subprocess.Popen(
            [sys.executable, "-c", DAEMON_ENTRY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            env={**os.environ, **environment} if environment else None,
        )
    assert daemon.stdout is not None and daemon.stdin is not None
    try:
        with contextlib.suppress(BrokenPipeError):  # a daemon that died says so below
            daemon.stdin.write(pickle.dumps(arguments))
        with contextlib.suppress(BrokenPipeError):
            daemon.stdin.close()
        line = _read_report(daemon, READY_TIMEOUT)
    finally:
        daemon.stdout.close()
    if line == "ready":
        return
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
    if line.startswith("error\t"):
        kind, _, message = line.removeprefix("error\t").partition("\t")
        raise DaemonError(message, kind)
    raise MountError(
        f"the mount daemon stopped without mounting {path}; "
        f"see {daemon_log(options.cache_dir or '')[0]}"
    )


def _read_report(daemon: subprocess.Popen[bytes], timeout: float) -> str:
    """The daemon's last word, ``ready`` or ``error<TAB>message`` ("" when it says nothing
    in time); its warnings before that (``warning<TAB>message``) are logged here."""
    assert daemon.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(daemon.stdout, selectors.EVENT_READ)
        while selector.select(max(0.0, deadline - time.monotonic())):
            line = daemon.stdout.readline().decode(errors="replace").strip()
            kind, _, message = line.partition("\t")
            if kind != "warning":
                return line
            log.warning("%s", message)
    return ""


def serve(
    root: str | os.PathLike[str],
    options: MountOptions | None = None,
    *,
    foreground: bool = False,
    tag_ttl: float = 60.0,
    negative_ttl: float = 30.0,
    idle: float = 600.0,
    **overrides: Any,
) -> Path:
    """Serve every kit at ``root`` (``root/REF/`` is the kit REF names) with a daemon in the
    background, or in this process until unmounted with ``foreground``; returns the root.
    See :mod:`modelkitfs.daemon.service`."""
    options = merged_options(options, overrides)
    if options.allow_local is None:  # it serves others: no folder of this machine unless listed
        options = options.replace(allow_local=())
    settings = {"tag_ttl": tag_ttl, "negative_ttl": negative_ttl, "idle": idle}
    for name, value in settings.items():
        if not value > 0:
            flag = "--" + name.replace("_", "-")
            raise MountError(f"{flag} must be a positive number of seconds, not {value:g}")
    if not foreground:
        _start_daemon(None, root, options, service=settings)
        return Path(os.path.abspath(root))
    _, path, options = _prepare(None, root, options)
    configure_logging(options.log_level)
    setproctitle.setproctitle(process_title(SERVICE, path))

    def ready() -> None:
        print(f"serving every kit at {path}; Ctrl-C to stop", flush=True)

    trio.run(
        partial(
            serve_kits, path, options, ready, tag_ttl=tag_ttl, negative_ttl=negative_ttl, idle=idle
        )
    )
    return Path(path)


def mount_foreground(
    reference: str,
    mountpoint: str | os.PathLike[str],
    options: MountOptions | None = None,
) -> None:
    """Mount and serve in this process, logging to stderr, until unmounted or interrupted;
    once mounted, one line on standard output says so."""
    reference, path, options = _prepare(reference, mountpoint, options)
    configure_logging(options.log_level)
    setproctitle.setproctitle(process_title(reference, path))

    def ready() -> None:
        print(f"mounted {reference} at {path}; Ctrl-C to unmount", flush=True)

    trio.run(serve_modelkit, reference, path, options, ready)


def unmount(mountpoint: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """Unmount a modelkitfs folder, including a dead one whose daemon was killed and one whose
    daemon is stopped (nothing here asks the daemon); refuse any other file system (that is
    umount(8)'s job, not ours)."""
    path = os.path.abspath(mountpoint)
    try:  # a path as the table has it asks nothing; one through links or mounts asks them
        entry, exists = ask(f"looking up {path}", partial(_look_up, path))
    except NoAnswer:
        raise MountError(
            f"cannot tell what {path} is: a file system on its way did not answer within "
            f"{ANSWER_TIMEOUT:g} s; give the mountpoint as 'modelkitfs mounts' lists it"
        ) from None
    if entry is None:
        if not exists:
            raise MountError(f"{path} does not exist: give the folder a kit is mounted at")
        raise MountError(f"{path} is not mounted: 'modelkitfs mounts' lists the mounts")
    if entry.fstype != f"fuse.{FSTYPE}":
        raise MountError(f"{path} is not a modelkitfs mount ({entry.fstype}); use umount(8)")
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), path]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MountError("fusermount3 is missing: install FUSE 3 (apt-get install fuse3)") from None
    if result.returncode == 0:
        return
    detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown error"
    if "busy" in detail.lower():
        holders = ", ".join(busy_holders(path)[:MAX_HOLDERS_NAMED]) or "a process"
        raise MountError(
            f"{path} is busy: {holders}; close them, or detach it now with 'modelkitfs umount "
            f"--lazy {path}' (the daemon then stops once the last file is closed)"
        )
    raise MountError(f"cannot unmount {path}: {detail}")


def _look_up(path: str) -> tuple[MountEntry | None, bool]:
    """What is mounted at ``path``, and whether ``path`` exists at all."""
    entry = mount_entry(path)
    return entry, entry is not None or os.path.lexists(path)
