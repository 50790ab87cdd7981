"""``python -m scapre``: see ``scapre/cli.py``."""

import sys

from scapre.bootstrap import load

if __name__ == "__main__":
    sys.exit(load("scapre.cli").main())
