"""The focused edit (variant ``focus``; beyond the paper): UCE's closed form, restricted to the few directions of the
text space where the erased prompts differ from their guides while the prompts to keep carry little.

Inputs are those of every edit: erase contexts ``X_j``, aligned guide tokens ``Y_j`` and preserve contexts ``Z_k``
(here the *references*: what must keep its meaning; the empty prompt's token ``e`` always counts as one, and so do
the prompts behind ``ConceptSet.reference_gram``, e.g. look-alikes found automatically). With ``D_j = X_j - Y_j`` and
``C = sum_k Z_k^T Z_k + e e^T (+ reference_gram)``, the edit may only act on ``V``: for every erase prompt the
``focus_rank`` leading generalized eigenvectors of ``(D_j^T D_j, C + eps tr(C)/d I)`` (directions of large
concept-to-guide difference per unit of reference energy; ``eps = focus_eps``), together orthonormalised (each prompt
gets its own directions: taken jointly, the prompt with the largest difference would take them all). Within ``V`` it
is UCE's least squares::

    min_M  sum_j ||(W0 + M V^T) X_j^T - W0 Y_j^T||^2 + lam ||M||^2
    =>  W = W0 + W0 A,   A = s K (V^T G V)^{-1} V^T,   K = sum_j (Y_j - X_j)^T X_j V,   G = lam I + s sum_j X_j^T X_j

(``s = erase_scale``, times the strength above 1). ``A`` depends on the text only, so it is built once per edit in
float64 and every matrix is then one product. A token ``u`` changes only through ``V^T u``: tokens of the
references, which the metric keeps out of ``V``, hardly move, whatever the width of the text space.

With a guide that is the concept's nearest look-alike, or the mean of several (``neighbour_guide``), the difference
``X_j - Y_j`` is what sets the concept apart from its look-alikes, and the edit replaces it by theirs.
"""

from __future__ import annotations

import dataclasses

import torch

from .concepts import ConceptSet
from .config import ScaPreConfig

#: Look-alikes whose encodings guide each concept (the ``precise`` preset; beyond the paper): the nearest one. The
#: mean of the two nearest (this preset's first form) can name nothing the model draws (a shape's two nearest may be a
#: shape and a colour), and the model then falls back on what it draws when nothing is named; the nearest alone forgot
#: every single concept in every miniature world (docs/miniworlds.md).
GUIDE_NEIGHBOURS = 1
#: Look-alikes found per concept and shown to the user (the guide's, then the next nearest; all are kept).
LOOK_ALIKES_SHOWN = 2


def _words(text: str) -> list[str]:
    return text.lower().split()


def made_of(text: str, concept: str) -> bool:
    """Whether every word of ``text`` is a word of ``concept`` (case ignored): "triangle" and "green" are made of
    "green triangle"."""
    words = _words(text)
    return bool(words) and set(words) <= set(_words(concept))


def binds(concept: str, look_alike: str) -> bool:
    """Whether ``concept`` is a binding of several words whose nearest look-alike is made of its own words ("green
    triangle" -> "triangle"). Guided there, the edit would keep the other word ("green"), which the model still
    draws: the concept's earlier word tokens are those of every prompt that starts the same way (a causal text
    encoder such as CLIP), so an edit cannot move them without moving "green square" too. Such a concept is
    guided by :func:`binding_guide` instead."""
    return len(_words(concept)) > 1 and made_of(look_alike, concept)


def last_word(concept: str) -> str:
    """The concept's last word ("triangle" of "green triangle"): in a causal text encoder the first token that has
    read the whole concept."""
    return concept.split()[-1]


def same_words(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same words (case and spacing ignored)."""
    return _words(a) == _words(b)


def binding_guide(concept: str, replacement: str) -> str:
    """The guide of a binding (:func:`binds`; beyond the paper): ``concept`` with its last word replaced by
    ``replacement``, that word's nearest look-alike ("green triangle" -> "green bar"). The last word's token is the
    one that carries the binding, and the only one an edit can redirect without moving prompts that share the earlier
    words. In the miniature worlds this forgot the pair "green triangle" among five concepts (0.81 of its pictures
    still showed it when guided to "triangle", at most 0.03 now); its look-alikes (green squares, red triangles) pay
    for it (docs/miniworlds.md)."""
    return " ".join([*concept.split()[:-1], replacement])


def focus_directions(concepts: ConceptSet, config: ScaPreConfig, device: torch.device) -> torch.Tensor:
    """``V``: ``[d, r]`` orthonormal directions the focused edit may change (float64 on ``device``;
    ``r <= focus_rank * m``)."""
    f64 = torch.float64
    dim = concepts.dim
    refs = [z.to(device=device, dtype=f64) for z in concepts.preserve_contexts]
    refs.append(concepts.empty_vec.to(device=device, dtype=f64).unsqueeze(0))
    c = sum(z.T @ z for z in refs)
    if concepts.reference_gram is not None:
        c = c + concepts.reference_gram.to(device=device, dtype=f64)
    c = c + config.focus_eps * float(torch.trace(c)) / dim * torch.eye(dim, dtype=f64, device=device)
    chol = torch.linalg.cholesky(0.5 * (c + c.T))
    cols = []
    for x, y in zip(concepts.contexts, concepts.targets, strict=True):
        # generalized eigenvectors of (D_j^T D_j, C): eigenvectors of L^{-1} D_j^T D_j L^{-T}, mapped back by L^{-T}
        diff = x.to(device=device, dtype=f64) - y.to(device=device, dtype=f64)
        half = torch.linalg.solve_triangular(chol, diff.T, upper=False)  # L^{-1} D_j^T, [d, t_j]
        vals, vecs = torch.linalg.eigh(half @ half.T)
        top = vecs[:, torch.argsort(vals, descending=True)[:min(dim, config.focus_rank)]]
        cols.append(torch.linalg.solve_triangular(chol.T, top, upper=True))  # L^{-T} u
    v = torch.cat(cols, dim=1)
    v, r = torch.linalg.qr(v)
    keep = r.diagonal().abs() > 1e-9 * r.diagonal().abs().max()  # directions shared by several prompts once
    return v[:, keep]


def focus_map(concepts: ConceptSet, config: ScaPreConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """``A`` (``[d, d]``, float64): the focused edit of every matrix is ``W0 A`` before ``strength``."""
    device = torch.device(device)
    f64 = torch.float64
    v = focus_directions(concepts, config, device)
    dim = v.shape[0]
    s = config.solve_scale  # erase_scale, times the strength above 1
    gram = torch.zeros(dim, dim, dtype=f64, device=device)
    k = torch.zeros(dim, v.shape[1], dtype=f64, device=device)
    for x, y in zip(concepts.contexts, concepts.targets, strict=True):
        x, y = x.to(device=device, dtype=f64), y.to(device=device, dtype=f64)
        gram += x.T @ x
        k += (y - x).T @ (x @ v)
    g = config.lam * torch.eye(dim, dtype=f64, device=device) + s * gram
    small = v.T @ g @ v
    return s * torch.linalg.solve(0.5 * (small + small.T), k.T).T @ v.T


def neighbour_guide(encodings: list[torch.Tensor], lasts: list[int]) -> tuple[torch.Tensor, int]:
    """One guide from several encoded prompts (a concept's nearest neighbours): the mean of their tokens from each
    one's last word token on, placed from index 1 (so its last-word index is 1). ``encodings`` are ``[T, d]``."""
    if not encodings:
        raise ValueError("a neighbour guide needs at least one encoded neighbour prompt")
    length = min(e.shape[0] - f for e, f in zip(encodings, lasts, strict=True))
    tails = torch.stack([e[f:f + length].to(torch.float64) for e, f in zip(encodings, lasts, strict=True)])
    guide = torch.zeros(length + 1, encodings[0].shape[1], dtype=torch.float64)
    guide[1:] = tails.mean(dim=0)
    return guide.to(encodings[0].dtype), 1


def reference_gram(encodings: list[torch.Tensor], lasts: list[int]) -> torch.Tensor:
    """``sum_k R_k^T R_k`` (float64) of encoded prompts, each from its last word token on (index 0 for the empty
    prompt: its whole sequence), as :attr:`ConceptSet.reference_gram` reads them."""
    if not encodings:
        raise ValueError("no reference prompts to build a Gram matrix from")
    dim = encodings[0].shape[-1]
    out = torch.zeros(dim, dim, dtype=torch.float64)
    for e, f in zip(encodings, lasts, strict=True):
        tail = e[f:].to(device="cpu", dtype=torch.float64)
        out.addmm_(tail.T, tail)
    return out


def nearest(concept_vecs: torch.Tensor, candidate_vecs: torch.Tensor, k: int,
            exclude: list[set[int]] | None = None) -> list[list[int]]:
    """For each concept vector (``[m, d]``), the indices of the ``k`` candidates (``[n, d]``) of highest cosine,
    best first, leaving out ``exclude[j]`` (e.g. the erased concepts themselves)."""
    a = torch.nn.functional.normalize(concept_vecs.to(torch.float64), dim=1)
    b = torch.nn.functional.normalize(candidate_vecs.to(torch.float64), dim=1)
    sims = a @ b.T
    out = []
    for j in range(sims.shape[0]):
        skip = exclude[j] if exclude else set()
        order = [int(i) for i in torch.argsort(sims[j], descending=True) if int(i) not in skip]
        out.append(order[:k])
    return out


def toward_look_alikes(published: ConceptSet, look_alikes: ConceptSet, share: float) -> ConceptSet:
    """``published`` with each erase prompt's target moved ``share`` of the way to its target in ``look_alikes``
    (beyond the paper; :attr:`ScaPreConfig.to_look_alike`): ``Y_j + share (L_j - Y_j)``. Both sets must hold the
    same erase prompts with the same contexts (the focus variant's text side and the published one, built from the
    same prompts; where one is longer, its rows past the other's, padding, keep the published target); at ``share``
    0 ``published`` itself is returned."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    if share == 0.0:
        return published
    if published.num_concepts != look_alikes.num_concepts or not all(
            torch.equal(x[:min(len(x), len(z))], z[:min(len(x), len(z))])
            for x, z in zip(published.contexts, look_alikes.contexts, strict=True)):
        raise ValueError("the look-alike guides were built for other erase prompts than the edit's: encode both "
                         "from the same prompts")
    targets = []
    for y, z in zip(published.targets, look_alikes.targets, strict=True):
        n = min(len(y), len(z))  # rows past the shorter one (padding) keep the published target
        moved = y.to(torch.float64).clone()
        moved[:n] += share * (z[:n].to(torch.float64) - moved[:n])
        targets.append(moved.to(y.dtype))
    targets = tuple(targets)
    texts = ()
    if published.guide_texts and look_alikes.guide_texts:
        texts = tuple(f"{g!r} moved {share:.2f} towards {z!r}"
                      for g, z in zip(published.guide_texts, look_alikes.guide_texts, strict=True))
    return dataclasses.replace(published, targets=targets, guides=targets, guide_index=tuple(range(len(targets))),
                               guide_texts=texts)
