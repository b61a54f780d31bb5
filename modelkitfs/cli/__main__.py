"""``python -m modelkitfs.cli``: the command, as the console script runs it."""

import sys

from modelkitfs.cli import main

sys.exit(main())
