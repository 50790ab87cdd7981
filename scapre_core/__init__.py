"""ScaPre concept erasure as a pure torch library (no ComfyUI import).

Each module cites the sections of ``docs/spec.md`` (the algorithm in equations, "SPEC") it implements.
Public API: :class:`ScaPreConfig`, :class:`ConceptSet`, :func:`erase`, :func:`informax_weights`.
"""

from ._version import __version__
from .concepts import ConceptSet
from .config import FIELD_HELP, INFORMAX_FIELDS, ScaPreConfig
from .erase import edit_matrix, erase, erase_iter, informax_weights
from .informax import InformaxResult, RowStats

__all__ = [
    "FIELD_HELP",
    "INFORMAX_FIELDS",
    "ConceptSet",
    "InformaxResult",
    "RowStats",
    "ScaPreConfig",
    "__version__",
    "edit_matrix",
    "erase",
    "erase_iter",
    "informax_weights",
]
