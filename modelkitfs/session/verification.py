"""``modelkitfs verify``: a reference's signatures judged by a policy, as ``cosign verify``
judges them, for any OCI manifest (a kit or not, so that cosign's own fixtures check it too).

The reference is resolved once, and the digest it resolved to is the one judged: every valid
signature's signer is reported, or :class:`~modelkitfs.signing.SignatureRefused` names why
none counts. Nothing is remembered: a user who asks checks again.

>>> verdict = verify("registry.example/team/llm:v1", verify_keys=["cosign.pub"])
>>> [str(signer) for signer in verdict.signers]
"""

from __future__ import annotations

from typing import Any

import trio

from modelkitfs.cache import default_cache_dir
from modelkitfs.reference import parse_reference
from modelkitfs.session.options import MountOptions, merged_options
from modelkitfs.session.sources import Sources
from modelkitfs.signing import PolicyError, Verdict

NO_SIGNER = (
    "verify needs a signer: --verify-key FILE (or $COSIGN_KEY), or --certificate-identity with "
    "--certificate-oidc-issuer and --trusted-root FILE"
)


async def verify_reference(reference: str, options: MountOptions) -> Verdict:
    ref = parse_reference(reference)
    policy = options.signature_policy()
    if policy is None:
        raise PolicyError(NO_SIGNER)
    options = options.replace(cache_dir=options.cache_dir or default_cache_dir())
    async with Sources(options) as sources:
        store = sources.store_for(ref)
        fetched = await store.source.get_manifest(store.repository, ref.identifier)
        return await sources.verify(ref, fetched.digest, policy, remember=False)


def verify(reference: str, options: MountOptions | None = None, **overrides: Any) -> Verdict:
    """The valid signatures of what ``reference`` names, by the options' signers
    (``verify_keys=[...]``, ``certificate_identity=...``...; $COSIGN_KEY...)."""
    return trio.run(verify_reference, reference, merged_options(options, overrides))
