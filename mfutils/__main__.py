"""``python -m mfutils <command>``: see ``mfutils.cli``."""

import sys

from .cli import main

sys.exit(main())
