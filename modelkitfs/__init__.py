"""modelkitfs: mount a KitOps ModelKit from an OCI registry as a lazy, read-only folder.

>>> import modelkitfs
>>> with modelkitfs.mount("registry.example/team/llm:v1") as root:      # FUSE
...     config = (root / "config.json").read_text()
>>> with modelkitfs.open("registry.example/team/llm:v1", "data/train.csv") as f:   # no FUSE
...     header = f.readline()
>>> modelkitfs.verify("registry.example/team/llm:v1", verify_keys=["cosign.pub"]).signers
"""

from modelkitfs.errors import ModelKitFSError
from modelkitfs.mount import Mount, mount, mount_foreground, serve, unmount
from modelkitfs.reader import KitReader
from modelkitfs.reader import open_file as open
from modelkitfs.session.options import MountOptions
from modelkitfs.session.verification import verify

__version__ = "0.1.0"
__all__ = [
    "KitReader",
    "ModelKitFSError",
    "Mount",
    "MountOptions",
    "__version__",
    "mount",
    "mount_foreground",
    "open",
    "serve",
    "unmount",
    "verify",
]
