"""``modelkitfs verify REFERENCE``: who signed what a reference names, as ``cosign verify``
says it; exit 1 with one line naming why when no signature counts."""

from __future__ import annotations

import argparse

from modelkitfs.cli.output import patience, print_json
from modelkitfs.cli.parser import Commands, access_arguments, json_argument, options_from
from modelkitfs.session.verification import verify


def add(commands: Commands) -> None:
    v = commands.add("verify", run_verify)
    v.add_argument("reference", metavar="REFERENCE")
    json_argument(v)
    access_arguments(v, fetches=False, policy=True)


def run_verify(args: argparse.Namespace) -> None:
    """check who signed a ModelKit, as cosign verify does

    Check the cosign signatures of what REFERENCE names (any OCI manifest): classic .sig
    signatures and sigstore bundles, signed with a key or keyless, checked offline. Prints each
    valid signature's signer and the digest; exits 1 with the reason when none is valid.

    examples:
      modelkitfs verify --verify-key cosign.pub {KIT}
      modelkitfs verify --certificate-identity ci@example.com \\
          --certificate-oidc-issuer https://accounts.google.com \\
          --trusted-root trusted_root.json {KIT}
    """
    options = options_from(args)
    with patience(args.reference, options.timeout):
        verdict = verify(args.reference, options)
    if args.json:
        print_json(
            {
                "reference": args.reference,
                "digest": verdict.digest,
                "signers": [signer.as_dict() for signer in verdict.signers],
                "warnings": verdict.warnings,
            }
        )
        return
    for warning in verdict.warnings:
        print(f"warning: {warning}")
    if verdict.signers:
        print(f"{args.reference} ({verdict.digest}) is signed by:")
    for signer in verdict.signers:
        print(f"  {signer}")
