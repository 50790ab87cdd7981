"""A miniature text-to-image world with Stable Diffusion's anatomy, for measuring concept erasure in images.

Procedural pictures (coloured shapes with styles), a word-level causal text encoder with CLIP's conventions, a
small UNet that reads the text only through ``attn2.to_k`` / ``attn2.to_v``, a judge CNN, and a benchmark that
edits the UNet with ``scapre_core`` and counts what it still draws. A benchmark, never imported by the pack.
"""

import pack  # noqa: F401  (benchmarks/pack.py: registers scapre_core; benchmarks/ is on sys.path here)
