"""ScaPre concept erasure for ComfyUI.

ComfyUI loads this folder as a package (under a name derived from its path) and calls
``comfy_entrypoint``. The math lives in ``scapre_core`` (pure torch); the ComfyUI side in ``nodes``,
imported only when ComfyUI's API is importable, so that tools, tests and the command line
(``python -m <this folder>``, see ``__main__.py``) can import the package without a running ComfyUI.
"""

WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401
except ImportError:  # not running inside ComfyUI
    pass
else:
    from .nodes.registry import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY"]
