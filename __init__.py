"""ScaPre concept erasure for ComfyUI.

ComfyUI loads this package as a custom node pack. The math lives in ``scapre_core`` (pure torch);
the nodes in ``nodes`` are only imported when ComfyUI's API is importable, so tools and tests can
import the package without a ComfyUI checkout.
"""

WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401
except ImportError:  # not running inside ComfyUI
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY"]
