"""The OCI distribution client: references in, verified manifests and blob bytes out."""

from modelkitfs.registry.client import RegistryClient
from modelkitfs.registry.layout import LayoutSource, from_kit_storage, from_layout_folder
from modelkitfs.registry.network import NetworkOptions
from modelkitfs.registry.source import FetchStats, Manifest

__all__ = [
    "FetchStats",
    "LayoutSource",
    "Manifest",
    "NetworkOptions",
    "RegistryClient",
    "from_kit_storage",
    "from_layout_folder",
]
