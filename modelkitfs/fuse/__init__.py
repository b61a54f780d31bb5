"""FUSE: the kit's merged tree served to the kernel as a read-only filesystem."""

from modelkitfs.fuse.operations import KitOperations
from modelkitfs.fuse.pushes import Pushes
from modelkitfs.fuse.session import serve

__all__ = ["KitOperations", "Pushes", "serve"]
