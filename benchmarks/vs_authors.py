"""This pack's edit against the authors' published scripts, on the same weights and encodings.

The authors' code (github kaiyuan02415/scapre, MIT) is not part of this repository: point
``--authors-code`` at a checkout of it (the folder holding ``edit/erase_scale.py`` and
``edit/erase.py``). Their modules import diffusers, transformers, pandas, PIL and requests at the top,
so run this script with a Python that has those and torch (no model is downloaded)::

    python benchmarks/vs_authors.py --authors-code /path/to/scapre

How the two are driven on equal terms:

* a tiny random diffusers ``UNet2DConditionModel`` in float64 (``torch.set_default_dtype(float64)``
  while their code runs, so that their float32-by-default buffers, e.g. the MI vector, are float64 too);
* precomputed encodings instead of a CLIP model: their pipeline gets a stand-in tokenizer whose
  ``attention_mask`` marks each prompt's last word token (their ``mask.sum() - 2``) and a stand-in text
  encoder that returns the stored ``[77, d]`` encoding of each prompt; this pack gets the same encodings
  through ``ConceptSet.from_embeddings``;
* their random draws are served from this pack's seeded generators: while their MI and entropy
  helpers run, their module's ``torch.randn`` / ``torch.randn_like`` hand out exactly the noise this pack
  draws for that matrix and concept (their code draws the MI noise twice per concept, for ``r`` and for
  the data term; both draws get the same numbers, as SPEC "Informax row weights" says this pack does).
  Any other random call in their code stops the script.

Settings follow SPEC: Informax off for the ``scale`` grid (their command line's default), Informax on
with concepts near the empty prompt (rows separate them only partly, so the MI is not tied; a tie is
where SPEC "Ties" documents a deliberate difference), ``bures_iters >= 1`` (their loop always runs one
round), constant ``mu = 0.1`` (theirs is fixed), no preserve prompts (their ScaPre code ignores them).
The ``tied`` line shows the documented tie artifact and is not counted in the figures.

Prints one line per setting: the largest difference over matrices, relative to the edit,
``||W_ours - W_theirs|| / ||W_theirs - W0||``, then the largest per group.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import itertools
import json
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: pack.py
import pack  # noqa: E402, F401  (registers scapre_core)

from scapre_core import ConceptSet, ScaPreConfig, erase  # noqa: E402
from scapre_core.informax import NOISE_BLOCK, matrix_generator  # noqa: E402

F64 = torch.float64
LENGTH = 77
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------
# Their code, loaded from their checkout
# ------------------------------------------------------------------------------------------------

def load_authors_module(path: Path, name: str) -> types.ModuleType:
    if not path.is_file():
        raise SystemExit(f"{path} not found: --authors-code must be a checkout of github kaiyuan02415/scapre")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as err:
        raise SystemExit(f"cannot import {path.name} ({err}); install diffusers, transformers, pandas, pillow and "
                         "requests into this Python") from err
    return module


class NoiseFeed:
    """Stands in for ``torch`` inside their module: everything is torch, except that ``randn`` and
    ``randn_like`` hand out queued draws (and refuse when nothing is queued)."""

    def __init__(self) -> None:
        self.queue: list[torch.Tensor] = []

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def _next(self, shape: tuple[int, ...]) -> torch.Tensor:
        if not self.queue:
            raise RuntimeError("the authors' code drew a random number this script did not expect")
        draw = self.queue.pop(0)
        if tuple(draw.shape) != tuple(shape):
            raise RuntimeError(f"the authors' code drew shape {tuple(shape)}, expected {tuple(draw.shape)}")
        return draw.clone()

    def randn(self, *size, **_kw) -> torch.Tensor:
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return self._next(tuple(int(s) for s in shape))

    def randn_like(self, tensor: torch.Tensor, **_kw) -> torch.Tensor:
        return self._next(tuple(tensor.shape))


class OurDraws:
    """The noise this pack draws per matrix (SPEC seeds: ``matrix_generator(seed, name, purpose)``)."""

    def __init__(self, weights: dict[str, torch.Tensor], concept_vecs: torch.Tensor, config: ScaPreConfig) -> None:
        self.weights, self.vecs, self.config = weights, concept_vecs, config
        self._cache: dict[tuple[str, str], list[torch.Tensor]] = {}

    def _draw(self, name: str, purpose: str, count: int, times: int) -> list[torch.Tensor]:
        key = (name, purpose)
        if key not in self._cache:
            gen = matrix_generator(self.config.seed, name, purpose, CPU)
            m, d = self.vecs.shape
            out = []
            for _ in range(times):
                out.append(torch.cat([torch.randn((min(NOISE_BLOCK, m - s), count, d), generator=gen, dtype=F64)
                                      for s in range(0, m, NOISE_BLOCK)]))
            self._cache[key] = out
        return self._cache[key]

    def name_of(self, w_old: torch.Tensor) -> str:
        found = [n for n, w in self.weights.items() if w.shape == w_old.shape and torch.equal(w, w_old)]
        if len(found) != 1:
            raise RuntimeError("could not tell which matrix the authors' code is working on")
        return found[0]

    def concept_of(self, c_vec: torch.Tensor) -> int:
        found = [j for j in range(self.vecs.shape[0]) if torch.equal(self.vecs[j], c_vec)]
        return found[0]

    def informax(self, w_old: torch.Tensor, c_vec: torch.Tensor) -> list[torch.Tensor]:
        pos, neg = self._draw(self.name_of(w_old), "informax", self.config.mi_samples, 2)
        j = self.concept_of(c_vec)
        return [pos[j], neg[j]]

    def entropy(self, w_old: torch.Tensor, num_samples: int) -> list[torch.Tensor]:
        if num_samples != self.config.entropy_samples:
            raise RuntimeError("entropy sample counts differ")
        (noise,) = self._draw(self.name_of(w_old), "entropy", num_samples, 1)
        return [noise[j, s] for j in range(noise.shape[0]) for s in range(num_samples)]


@contextlib.contextmanager
def float_is_float64():
    """Their MI helper counts with ``.sum().float()``: float32 whatever the weights' dtype. This widens
    ``Tensor.float`` to float64 for the duration (their arithmetic otherwise unchanged)."""
    saved = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: self.to(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.float = saved


@contextlib.contextmanager
def fed_noise(module: types.ModuleType, draws: OurDraws, widen_counts: bool):
    """Run their helpers with this pack's noise for the matrix and concept at hand."""
    feed = NoiseFeed()
    saved = module.torch, module._compute_mi_softmask_emptyneg, module._compute_entropy_factor
    mi_fn, ent_fn = saved[1], saved[2]

    def mi(W_old, c_vec, empty_vec, **kw):
        feed.queue = draws.informax(W_old, c_vec)
        with float_is_float64() if widen_counts else contextlib.nullcontext():
            out = mi_fn(W_old=W_old, c_vec=c_vec, empty_vec=empty_vec, **kw)
        assert not feed.queue, "the MI helper drew less noise than expected"
        return out

    def entropy(W_old, concept_vecs, num_samples=20, **kw):
        feed.queue = draws.entropy(W_old, num_samples)
        out = ent_fn(W_old, concept_vecs, num_samples=num_samples, **kw)
        assert not feed.queue, "the entropy helper drew less noise than expected"
        return out

    module.torch, module._compute_mi_softmask_emptyneg, module._compute_entropy_factor = feed, mi, entropy
    try:
        yield
    finally:
        module.torch, module._compute_mi_softmask_emptyneg, module._compute_entropy_factor = saved


# ------------------------------------------------------------------------------------------------
# A tiny pipeline their edit_model accepts
# ------------------------------------------------------------------------------------------------

class TableTokenizer:
    """``tok(texts, ...)``: ``input_ids[:, 0]`` indexes the stored prompt; ``attention_mask`` covers the start
    token, the words and the end token, so their ``mask.sum() - 2`` is the last word's index."""

    model_max_length = LENGTH

    def __init__(self, table: dict[str, tuple[torch.Tensor, int]]) -> None:
        self.table = table
        self.names = list(table)

    def __call__(self, texts, **_kw) -> types.SimpleNamespace:
        ids = torch.zeros(len(texts), LENGTH, dtype=torch.long)
        mask = torch.zeros(len(texts), LENGTH, dtype=torch.long)
        for i, text in enumerate(texts):
            key = "" if text.strip() == "" else text  # their code sends ' ' for the empty guide
            ids[i, 0] = self.names.index(key)
            mask[i, : self.table[key][1] + 2] = 1
        return types.SimpleNamespace(input_ids=ids, attention_mask=mask)


class TableEncoder:
    def __init__(self, tokenizer: TableTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, ids: torch.Tensor):
        names = self.tokenizer.names
        return (torch.stack([self.tokenizer.table[names[int(i)]][0] for i in ids[:, 0]]),)


def tiny_unet(dim: int, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=dim, attention_head_dim=8, norm_num_groups=8,
    )
    return unet.to(F64).eval()


def kv_weights(unet) -> dict[str, torch.Tensor]:
    return {f"{name}.{kv}.weight": getattr(module, kv).weight.detach().clone()
            for name, module in unet.named_modules() if name.endswith("attn2") for kv in ("to_k", "to_v")}


# ------------------------------------------------------------------------------------------------
# Encodings
# ------------------------------------------------------------------------------------------------

def make_texts(dim: int, concepts: int, near: float | None, seed: int) -> dict[str, tuple[torch.Tensor, int]]:
    """Stored encodings: the empty prompt, ``concepts`` erase prompts ``c0..`` (last word at 1 to 4), guides
    ``art`` (last word 1) and ``g0..`` (last word 1 to 3). ``near``: the concept vectors are
    ``e + near * unit`` (rows separate them from the empty prompt only partly at sigma 0.01)."""
    g = torch.Generator().manual_seed(seed)

    def token(n: int = 1) -> torch.Tensor:
        return torch.randn(n, dim, generator=g, dtype=F64) / dim**0.5

    empty = torch.cat([token(1) * 3, token(LENGTH - 1)])
    table = {"": (empty, 0)}
    for j in range(concepts):
        last = 1 + j % 4
        seq = token(LENGTH)
        if near is not None:
            u = torch.randn(dim, generator=g, dtype=F64)
            seq[last] = empty[1] + near * u / u.norm()
        table[f"c{j}"] = (seq, last)
    table["art"] = (token(LENGTH), 1)
    for j in range(concepts):
        table[f"g{j}"] = (token(LENGTH), 1 + j % 3)
    return table


def concept_set(table, prompts: list[str], guides: list[str]) -> ConceptSet:
    return ConceptSet.from_embeddings(
        erase=[table[p][0] for p in prompts], erase_last=[table[p][1] for p in prompts],
        guide=[table[g][0] for g in guides], guide_last=[table[g][1] for g in guides], empty=table[""][0])


# ------------------------------------------------------------------------------------------------
# One comparison
# ------------------------------------------------------------------------------------------------

def run_theirs(module, unet, table, prompts, guides, config: ScaPreConfig, weights, concepts,
               widen_counts: bool) -> dict:
    tok = TableTokenizer(table)
    pipe = types.SimpleNamespace(unet=copy.deepcopy(unet), tokenizer=tok, text_encoder=TableEncoder(tok), device=CPU)
    common = dict(ldm_stable=pipe, old_text_=prompts, new_text_=["" if g == "" else g for g in guides],
                  retain_text_=None, lamb=config.lam, erase_scale=config.erase_scale, with_to_k=True,
                  technique=config.technique, p=config.p, entropy_samples=config.entropy_samples,
                  entropy_bins=config.entropy_bins, noise_sigma=config.noise_sigma, T_sigma=config.t_sigma,
                  p_sigma=config.p_sigma)
    if config.variant == "scale":
        extra = dict(enable_ased=config.ased, enable_egbr=config.egbr, bures_mu_from_entropy=config.mu_from_entropy,
                     use_mi_softmask=config.use_informax, bures_iters=config.bures_iters)
    else:
        extra = dict(svd=config.svd_residual, alpha_min=config.alpha_min)
    draws = OurDraws(weights, concepts.concept_vecs, config)
    default = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        with fed_noise(module, draws, widen_counts), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            module.edit_model(**common, **extra)
    finally:
        torch.set_default_dtype(default)
    return kv_weights(pipe.unet)


def compare(ours, theirs, originals) -> float:
    return max(float((ours[k] - theirs[k]).norm() / (theirs[k] - originals[k]).norm()) for k in originals)


def settings():
    """(group, config overrides, text set, guide mode)."""
    guide_modes = ("empty", "art", "per-concept")
    scale_grid = itertools.product(("replace", "tensor"), (False, True), (False, True), (1, 2), (True, False),
                                   guide_modes, (1.0, 3.0))
    for tech, ased, egbr, iters, mu_ent, guide, s in scale_grid:
        yield ("scale, Informax off", dict(variant="scale", use_informax=False, technique=tech, ased=ased, egbr=egbr,
                                           bures_iters=iters, mu_from_entropy=mu_ent, erase_scale=s), "far", guide)
    for tech, svd, alpha_min, guide, s in itertools.product(("replace", "tensor"), (False, True), (0.5, 1.0),
                                                           guide_modes, (1.0, 2.0)):
        yield ("small, Informax on", dict(variant="small", technique=tech, svd_residual=svd,
                                                      alpha_min=alpha_min, erase_scale=s, p=2.0), "near", guide)
    for p, ased, egbr, mu_ent, guide in itertools.product((2.0, 5.0), (False, True), (False, True), (True, False),
                                                          ("empty", "art")):
        yield ("scale, Informax on", dict(variant="scale", p=p, ased=ased, egbr=egbr, bures_iters=1,
                                                      mu_from_entropy=mu_ent, erase_scale=2.0), "near", guide)
    yield ("tied", dict(variant="scale", p=5.0, bures_iters=1, erase_scale=2.0), "far", "empty")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-code", type=Path, required=True,
                        help="checkout of github kaiyuan02415/scapre (holds edit/erase_scale.py and edit/erase.py)")
    parser.add_argument("--dim", type=int, default=32, help="text width d of the tiny model (default 32)")
    parser.add_argument("--concepts", type=int, default=3, help="erase prompts per edit (default 3)")
    parser.add_argument("--every", type=int, default=1, help="run every n-th setting only (a quick look)")
    parser.add_argument("--mi-counts", nargs="+", choices=("float32", "float64"), default=["float32", "float64"],
                        help="with Informax on, run their MI helper as published (float32 counts) and/or with the "
                             "counts widened to float64 (default: both)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    args = parser.parse_args(argv)

    modules = {"scale": load_authors_module(args.authors_code / "edit" / "erase_scale.py", "authors_erase_scale"),
               "small": load_authors_module(args.authors_code / "edit" / "erase.py", "authors_erase")}
    unet = tiny_unet(args.dim, seed=0)
    originals = kv_weights(unet)
    tables = {"far": make_texts(args.dim, args.concepts, None, seed=1),
              "near": make_texts(args.dim, args.concepts, 0.03, seed=2)}
    prompts = [f"c{j}" for j in range(args.concepts)]
    guides = {"empty": [""] * args.concepts, "art": ["art"] * args.concepts,
              "per-concept": [f"g{j}" for j in range(args.concepts)]}
    print(f"# tiny diffusers UNet: {len(originals)} matrices, rows {sorted({w.shape[0] for w in originals.values()})}, "
          f"d = {args.dim}, {args.concepts} erase prompts, float64", flush=True)

    worst: dict[str, float] = {}
    counts: dict[str, int] = {}
    for index, (group, overrides, texts, guide) in enumerate(settings()):
        if index % args.every:
            continue
        config = ScaPreConfig(precision="float64", seed=index, **overrides)
        table = tables[texts]
        concepts = concept_set(table, prompts, guides[guide])
        ours = erase(originals, concepts, config)
        # Informax on: once as published (MI counts in float32), once with the counts widened to float64
        modes = args.mi_counts if config.use_informax else ("-",)
        for counts_dtype in modes:
            start = time.perf_counter()
            theirs = run_theirs(modules[config.variant], unet, table, prompts, guides[guide], config, originals,
                                concepts, widen_counts=counts_dtype == "float64")
            rel = compare(ours, theirs, originals)
            key = group if counts_dtype == "-" else f"{group}, their MI counts in {counts_dtype}"
            worst[key] = max(worst.get(key, 0.0), rel)
            counts[key] = counts.get(key, 0) + 1
            label = ", ".join(f"{k}={v}" for k, v in overrides.items()) + f", guide={guide}"
            if args.json:
                print(json.dumps({"group": key, "settings": overrides, "guide": guide, "rel_diff": rel}), flush=True)
            else:
                print(f"{rel:9.2e}  {key}: {label}  ({time.perf_counter() - start:.1f} s)", flush=True)
    print("# largest difference relative to the edit, per group:")
    for key, value in worst.items():
        note = "  (SPEC 'Ties': a deliberate difference, not a mismatch)" if key.startswith("tied") else ""
        print(f"#   {key}: {counts[key]} settings, {value:.1e}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
