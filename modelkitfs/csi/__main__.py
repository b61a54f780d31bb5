"""``python -m modelkitfs.csi``: the CSI node plugin (see :func:`modelkitfs.csi.main`)."""

import sys

from modelkitfs.csi import main

sys.exit(main(sys.argv[1:]))
