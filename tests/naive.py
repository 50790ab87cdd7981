"""A deliberately plain float64 restatement of SPEC.md, row by row, for small test sizes.

Nothing here is shared with scapre_core: loops instead of batching, explicit inverses instead of
factorizations, the projector built as written. Tests compare the library against it.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def concept_inputs(erase, erase_last, guide, guide_last, empty):
    """c_j, X_j, Y_j and e exactly as SPEC "Inputs" words them."""
    cs, xs, ys = [], [], []
    for p, f_p, g, f_g in zip(erase, erase_last, guide, guide_last, strict=False):
        t = p.shape[0] - max(f_p, f_g)
        cs.append(p[f_p].to(F64))
        xs.append(p[f_p:f_p + t].to(F64))
        ys.append(g[f_g:f_g + t].to(F64))
    return cs, xs, ys, empty[1].to(F64)


def projector(cs):
    c = torch.stack(cs, 1)
    m = c.shape[1]
    return c @ torch.linalg.inv(c.T @ c + 1e-8 * torch.eye(m, dtype=F64)) @ c.T


def targets(w0, xs, ys, technique):
    out = []
    for x, y in zip(xs, ys, strict=False):
        tgt = w0 @ y.T
        if technique == "tensor":
            u = w0 @ x.T
            u = u / u.norm()
            tgt = tgt - (u * tgt).sum() * u
        out.append(tgt)
    return out


def data_term(w0, xs, ys, weights, scale, technique):
    v = torch.zeros_like(w0)
    for j, (x, tgt) in enumerate(zip(xs, targets(w0, xs, ys, technique), strict=False)):
        v += scale * weights[:, j:j + 1] * (tgt @ x)
    return v


def ased(cs, mu, t_sigma, p_sigma):
    u, s, _ = torch.linalg.svd(torch.stack(cs, 1), full_matrices=False)
    med = torch.median(s)
    gate = torch.sigmoid((s - med) / (t_sigma + 1e-8)) ** p_sigma
    return u @ torch.diag((1 - gate) * mu) @ u.T


def bures(w0, a, mu, lam_p, iters):
    out = torch.empty_like(a)
    for i in range(a.shape[0]):
        an, r0 = a[i].norm(), w0[i].norm()
        ua, u0 = a[i] / an, w0[i] / r0
        u, r = ua, an
        for _ in range(iters):
            kappa = max(0.0, float(u @ u0))
            r = (lam_p * an + mu * r0 * kappa) / (lam_p + mu)
            num = lam_p * an * ua + mu * r0 * kappa * u0
            u = num / num.norm()
        out[i] = r * u
    return out


def egbr(w0, w, h):
    out = torch.empty_like(w)
    hmax = max(float(h.max()), 1e-6)
    for i in range(w.shape[0]):
        alpha = 1 - math.exp(-float(h[i]) / hmax)
        r0, r1 = w0[i].norm(), w[i].norm()
        u0, u1 = w0[i] / r0, w[i] / r1
        beta = alpha * max(0.0, float(u0 @ u1))
        u = (1 - beta) * u0 + beta * u1
        u = u / u.norm()
        energy = math.exp((1 - alpha) * math.log(r0**2) + alpha * math.log(r1**2))
        out[i] = math.sqrt(energy) * u
    return out


def scale_edit(w0, cs, xs, ys, zs, weights, entropy, cfg):
    """SPEC "The closed-form solve" + "Geometry alignment", one linear solve per row."""
    d = w0.shape[1]
    h = (1 - entropy).clamp(0, 1)
    mu = float(h.mean()) if cfg.mu_from_entropy else cfg.mu
    c = torch.stack(cs, 1)
    s_mat = cfg.erase_scale * sum(x.T @ x for x in xs)
    pres = sum((z.T @ z for z in zs), torch.zeros(d, d, dtype=F64)) * cfg.preserve_scale
    r_mat = ased(cs, mu, cfg.t_sigma, cfg.p_sigma) if cfg.ased else torch.zeros(d, d, dtype=F64)
    g = (cfg.lam + mu) * torch.eye(d, dtype=F64) + r_mat + c @ c.T + s_mat + pres
    v = data_term(w0, xs, ys, weights, cfg.erase_scale, cfg.technique) + w0 @ pres
    p = projector(cs)
    r = weights.max(dim=1).values
    solved = torch.empty_like(w0)
    for i in range(w0.shape[0]):
        m_i = g + cfg.erase_scale * float(r[i]) * p
        b_i = (cfg.lam + mu) * w0[i] + v[i]
        solved[i] = torch.linalg.solve(m_i, b_i)
    out = bures(w0, solved, mu, cfg.lam + mu, cfg.bures_iters) if cfg.bures_iters else solved
    return egbr(w0, out, h) if cfg.egbr else out


def small_edit(w0, cs, xs, ys, zs, weights, entropy, cfg):
    """SPEC "The small-scale variant", with the residual subtracted before the solve."""
    d = w0.shape[1]
    c = torch.stack(cs, 1)
    pres = sum((z.T @ z for z in zs), torch.zeros(d, d, dtype=F64)) * cfg.preserve_scale
    mat1 = cfg.lam * w0 + data_term(w0, xs, ys, weights, cfg.erase_scale, cfg.technique) + w0 @ pres
    mat2 = cfg.lam * torch.eye(d, dtype=F64) + c @ c.T + cfg.erase_scale * sum(x.T @ x for x in xs) + pres
    if cfg.svd_residual:
        u, s, _ = torch.linalg.svd(c, full_matrices=False)
        gate = torch.sigmoid((s - torch.median(s)) / (cfg.t_sigma + 1e-8)) ** cfg.p_sigma
        c_res = (torch.eye(d, dtype=F64) - u @ torch.diag(gate) @ u.T) @ c
        mat1 = mat1 - cfg.erase_scale * (w0 @ c_res) @ c_res.T
    w_new = mat1 @ torch.linalg.inv(mat2)
    alpha = (cfg.alpha_min + (1 - cfg.alpha_min) * entropy).unsqueeze(1)
    return alpha * w_new + (1 - alpha) * w0


def uce_edit(w0, xs, ys, zs, cfg):
    """SPEC "Baseline": UCE's closed form."""
    d = w0.shape[1]
    ones = torch.ones(w0.shape[0], len(xs), dtype=F64)
    pres = sum((z.T @ z for z in zs), torch.zeros(d, d, dtype=F64)) * cfg.preserve_scale
    mat1 = cfg.lam * w0 + data_term(w0, xs, ys, ones, cfg.erase_scale, cfg.technique) + w0 @ pres
    mat2 = cfg.lam * torch.eye(d, dtype=F64) + cfg.erase_scale * sum(x.T @ x for x in xs) + pres
    return mat1 @ torch.linalg.inv(mat2)


def mutual_information(z, labels):
    """MI of a binary activation vector and binary labels, the reference formula (counts + 1e-8)."""
    k = len(z)
    eps = 1e-8
    pairs = list(zip(z, labels, strict=True))
    n = {(a, b): sum(1 for pair in pairs if pair == (a, b)) + eps for a in (0, 1) for b in (0, 1)}
    p = {key: val / k for key, val in n.items()}
    pz = {a: p[(a, 0)] + p[(a, 1)] for a in (0, 1)}
    pl = {b: p[(0, b)] + p[(1, b)] for b in (0, 1)}
    return sum(p[(a, b)] * math.log(p[(a, b)] / (pz[a] * pl[b])) for a in (0, 1) for b in (0, 1))


def histogram_entropy_factor(acts_row, bins):
    """e = 1 - H / log(bins) from torch.histc on the min-max normalised row (SPEC)."""
    lo, hi = acts_row.min(), acts_row.max()
    unit = (acts_row - lo) / (hi - lo + 1e-8)
    hist = torch.histc(unit, bins=bins, min=0.0, max=1.0)
    p = hist / (hist.sum() + 1e-8)
    h = -(p * (p + 1e-8).log()).sum()
    return float(1 - h / math.log(bins))


# ------------------------------------------------------------------------------------------------
# Sampled Informax, restated row by row (SPEC "Informax row weights", "Entropy factor").
# The noise is drawn the way the library documents it: one generator per (seed, matrix, purpose),
# seeded from the first 8 bytes (little endian, top bit cleared) of sha256("seed\0name\0purpose");
# "informax" draws all positives [m, K, d], then all negatives [m, K, d]; "entropy" draws
# [m, N, d]; each in calls of at most 256 concepts.
# ------------------------------------------------------------------------------------------------

DRAW_BLOCK = 256


def seeded_generator(seed, name, purpose):
    import hashlib

    digest = hashlib.sha256(f"{seed}\x00{name}\x00{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def draw_noise(generator, m, count, d, dtype):
    """``[m, count, d]`` standard normal draws, in calls of at most DRAW_BLOCK concepts."""
    parts = [torch.randn(min(DRAW_BLOCK, m - s), count, d, generator=generator, dtype=dtype)
             for s in range(0, m, DRAW_BLOCK)]
    return torch.cat(parts)


def informax_noise(seed, name, m, k, d, dtype):
    """(positive noise, negative noise), each ``[m, K, d]``, as the library draws them for one matrix."""
    gen = seeded_generator(seed, name, "informax")
    return draw_noise(gen, m, k, d, dtype), draw_noise(gen, m, k, d, dtype)


def entropy_noise(seed, name, m, n, d, dtype):
    return draw_noise(seeded_generator(seed, name, "entropy"), m, n, d, dtype)


def sampled_mi(w0, cs, e, sigma, pos_noise, neg_noise):
    """``I[i, j]`` from K noisy positives c_j + sigma z and K noisy negatives e + sigma z', binarised at
    each row's lower median with a strict '>' (float64, one row and concept at a time)."""
    rows, m, k = w0.shape[0], len(cs), pos_noise.shape[1]
    mi = torch.empty(rows, m, dtype=F64)
    labels = [1] * k + [0] * k
    for j in range(m):
        samples = [cs[j].to(F64) + sigma * pos_noise[j, s].to(F64) for s in range(k)]
        samples += [e.to(F64) + sigma * neg_noise[j, s].to(F64) for s in range(k)]
        for i in range(rows):
            acts = [float(w0[i].to(F64) @ x) for x in samples]
            tau = sorted(acts)[(2 * k - 1) // 2]
            mi[i, j] = mutual_information([int(a > tau) for a in acts], labels)
    return mi


def soft_mask(mi, temperature, power):
    """``sigmoid(z / T)^p``, z standardised over rows (unbiased std + 1e-8; tied when std <= 1e-6)."""
    out = torch.empty_like(mi)
    for j in range(mi.shape[1]):
        col = [float(v) for v in mi[:, j]]
        mean = sum(col) / len(col)
        std = math.sqrt(sum((v - mean) ** 2 for v in col) / (len(col) - 1))
        for i, v in enumerate(col):
            z = 0.0 if std <= 1e-6 else (v - mean) / (std + 1e-8)
            out[i, j] = (1.0 / (1.0 + math.exp(-z / temperature))) ** power
    return out


def sampled_entropy(w0, cs, sigma, noise, bins):
    """``e_i`` from the activations on c_j + sigma z for every concept and draw."""
    samples = [cs[j].to(F64) + sigma * noise[j, s].to(F64) for j in range(len(cs)) for s in range(noise.shape[1])]
    acts = torch.stack([w0.to(F64) @ x for x in samples], dim=1)  # [o, m * N]
    return torch.tensor([histogram_entropy_factor(acts[i], bins) for i in range(w0.shape[0])], dtype=F64)
