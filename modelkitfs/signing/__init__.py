"""Signed kits: a kit is served only when a signer the policy trusts signed its manifest digest,
checked offline, as ``cosign verify`` checks it (README, Signed kits).

The layer sits between the registry client and the kit: it reads signatures through the same
sources a kit is read from (credentials per host, mirrors, retries) and knows nothing of FUSE or
of what a ModelKit holds, so ``modelkitfs verify`` checks any OCI manifest. One mechanism,
written with ``cryptography`` alone, checks every kind of signature cosign makes, found beside
the manifest by :mod:`.discovery`: classic ``.sig`` signatures (:mod:`.classic`), sigstore
bundles behind the referrers API (:mod:`.bundles`), with a key or keyless
(:mod:`.certificates`), each with its transparency-log entry (:mod:`.rekor`), against a policy
(:mod:`.policy`), judged in :mod:`.verifier` and remembered per manifest digest and policy
(:mod:`.remembered`).
"""

from modelkitfs.signing.policy import Policy, PolicyError, load_policy
from modelkitfs.signing.verifier import (
    SignatureRefused,
    SignatureStore,
    Signer,
    Verdict,
    signatures_of,
    verify_digest,
)

__all__ = [
    "Policy",
    "PolicyError",
    "SignatureRefused",
    "SignatureStore",
    "Signer",
    "Verdict",
    "load_policy",
    "signatures_of",
    "verify_digest",
]
