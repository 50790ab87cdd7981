"""A test-only ComfyUI node: the stand-in text encoders of ``tests/comfy/dit_support.py`` as a CLIP output, so
that DiT workflows run over HTTP where the real T5-XXL / umT5-XXL / Qwen2.5-VL files cannot be loaded. Loaded by
the DiT HTTP tests' server only, never by users."""

import importlib.util
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[2]
for _name in ("comfy_support", "dit_support"):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, _TESTS / f"{_name}.py")
        sys.modules[_name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules[_name])
dit_support = sys.modules["dit_support"]


class DiTTestTextEncoder:
    @classmethod
    def INPUT_TYPES(cls):
        kinds = sorted(set(dit_support.TEXT_ENCODER_OF.values()))
        return {"required": {"kind": (kinds, {"tooltip": "which model's text encoder to stand in for"})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, kind):
        return (dit_support.make_clip(kind),)


NODE_CLASS_MAPPINGS = {"DiTTestTextEncoder": DiTTestTextEncoder}
