"""ScaPre without the GUI: ``python -m comfyui-scapre erase|evaluate`` (run from ComfyUI's ``custom_nodes``
folder with the Python of a ComfyUI install). A layer beside ``nodes/``, over the same ``scapre_core`` and
``nodes/glue`` functions; it never calls node classes. See ``cli.py`` and the README."""
