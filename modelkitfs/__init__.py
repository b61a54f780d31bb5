"""modelkitfs: mount a KitOps ModelKit from an OCI registry as a lazy, read-only folder."""

from modelkitfs.errors import ModelKitFSError
from modelkitfs.mount import mount, mount_foreground, unmount
from modelkitfs.options import MountOptions

__version__ = "0.1.0"
__all__ = ["ModelKitFSError", "MountOptions", "__version__", "mount", "mount_foreground", "unmount"]
