"""``python -m mfutils <command>``: see ``mfutils.run.cli``."""

import sys

from mfutils.run.cli import main

if __name__ == "__main__":  # importing the module (e.g. pkgutil.walk_packages) runs nothing
    sys.exit(main())
