"""The OCI distribution client: references in, verified manifests and blob bytes out."""

from modelkitfs.registry.client import FetchStats, Manifest, RegistryClient

__all__ = ["FetchStats", "Manifest", "RegistryClient"]
