"""ComfyUI-side functions shared by the nodes (``nodes/``) and the command line (``scapre/``).

Where ``scapre_core`` is pure torch, this package works on ComfyUI's objects: it reads a MODEL's
weights, encodes prompts with a CLIP as CLIPTextEncode does (up to rounding), runs the edit into patches and
writes LoRA files. Neither caller re-implements any of it; it imports ComfyUI, so import it only where
ComfyUI is importable.
"""
