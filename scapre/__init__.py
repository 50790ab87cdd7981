"""ScaPre without the GUI: ``python -m scapre erase|evaluate`` (run from the pack's folder with the
Python of a ComfyUI install). A layer beside ``nodes/``, over the same ``scapre_core`` and
``scapre_comfy`` functions; it never calls node classes. See ``cli.py`` and the README."""
