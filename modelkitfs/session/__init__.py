"""What one kit session needs, from the options to an opened kit: the options and the user's
configuration, the sources (registries, local layouts, kit's storage, one shared cache, the
signature policy) a kit is read through, the catalog that notes which kits a cache holds, the
warning for filters that select nothing, and the work done on one opened kit without serving
it (prefetching, verifying). Mounting, serving and reading without a mount each open kits
through :func:`~modelkitfs.session.kits.open_kit`."""

from modelkitfs.session.kits import OpenedKit, open_kit
from modelkitfs.session.sources import Sources

__all__ = ["OpenedKit", "Sources", "open_kit"]
