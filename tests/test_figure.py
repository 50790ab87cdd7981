"""The report figure renders at 1, 10 and 300 concepts: right size, not blank, no layout warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from comfyui_scapre.nodes.glue.figure import WIDTH_PX, render  # imports matplotlib only when drawing
from comfyui_scapre.scapre_core.report import EditReport, MatrixResult, PromptResult


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(not _has_matplotlib(), reason="matplotlib is not installed")


def synthetic_report(concepts: int, probes: int, matrices: int = 32, seed: int = 0) -> EditReport:
    rng = np.random.default_rng(seed)
    mats = tuple(MatrixResult(f"diffusion_model.input_blocks.{i // 2}.1.transformer_blocks.0.attn2.to_{'kv'[i % 2]}"
                              ".weight", (320, 768), float(rng.uniform(0.01, 0.2))) for i in range(matrices))
    prompts = [PromptResult(f"concept number {j} with a fairly long name", "erase", float(rng.uniform(0.3, 1)),
                            float(rng.uniform(0, 1)), tuple(rng.uniform(0, 1, matrices)),
                            tuple(rng.uniform(0, 1, matrices)), concept=f"c{j}") for j in range(concepts)]
    prompts += [PromptResult(f"probe {k}", "probe" if k % 2 else "preserve", 0.0, float(rng.uniform(0, 0.3)),
                             tuple(np.zeros(matrices)), tuple(rng.uniform(0, 0.3, matrices))) for k in range(probes)]
    return EditReport(matrices=mats, prompts=tuple(prompts), seconds=1.0)


@needs_matplotlib
@pytest.mark.parametrize("concepts,probes", [(1, 0), (10, 3), (300, 40)])
def test_figure_renders_readably(concepts, probes):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constrained layout reports overlaps and collapses as warnings
        image = render(synthetic_report(concepts, probes))
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[1] == WIDTH_PX and 300 <= image.shape[0] <= 2000
    assert 0.0 <= image.min() and image.max() <= 1.0
    # not blank: plenty of non-white pixels and several distinct colours
    assert (image.mean(axis=2) < 0.9).mean() > 0.02
    assert len(np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20


def test_without_matplotlib_the_figure_says_why(monkeypatch):
    """Runs with or without matplotlib installed: its import is made to fail either way."""
    import builtins

    from comfyui_scapre.nodes.glue.figure import FigureUnavailable

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(FigureUnavailable, match="pip install matplotlib"):
        render(synthetic_report(2, 1))
