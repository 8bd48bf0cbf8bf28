"""``python -m mfutils <command>``: see ``mfutils.run.cli``."""

import sys

from mfutils.run.cli import main

sys.exit(main())
