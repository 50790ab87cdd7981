"""Everything that touches ComfyUI: the V3 node classes (one module per node family, registered in
``registry.py``), ``glue/`` (ComfyUI-side functions shared by the nodes and the command line: reading a
MODEL's weights, encoding with its CLIP, patching, saving) and ``cli/`` (``python -m <pack folder>``).

Importing this package imports nothing from ComfyUI; its submodules do."""
