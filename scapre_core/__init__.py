"""ScaPre concept erasure as a pure torch library (no ComfyUI import).

See ``SPEC`` sections cited in each module. Public API: :class:`ScaPreConfig`,
:class:`ConceptSet`, :func:`erase`, :func:`informax_weights`.
"""

from .concepts import ConceptSet
from .config import FIELD_HELP, INFORMAX_FIELDS, ScaPreConfig
from .erase import edit_matrix, erase, erase_iter, informax_weights
from .informax import InformaxResult, RowStats

__version__ = "0.1.0"

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
