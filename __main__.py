"""The command line: ``python -m comfyui-scapre erase|evaluate ...`` run from ComfyUI's ``custom_nodes``
folder (the name is this folder's), with the Python of that ComfyUI install. Python then imports this
folder as a package, as ComfyUI does, so nothing needs it on ``sys.path``. See ``nodes/cli/cli.py``."""

import sys

from .nodes.cli.cli import main

if __name__ == "__main__":
    sys.exit(main())
