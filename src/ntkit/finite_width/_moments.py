"""One layer's Gaussian statistics for all N inputs, in the packed pair layout of the four-point engine.

Pairs p = (a, b), a <= b, are numbered in ``torch.triu_indices`` order; ``pair_index[a, b]``
(symmetric, N x N) gives p. Everything a four-point recursion needs at layer l (note §2.1-2.2)
is collected here:

* per pair, from :class:`PairGaussian` (2-D, exact to round-off / the 2-D rule's 1e-12):
  ``g_p = <sigma_a sigma_b>``, ``gp_p = <sigma'_a sigma'_b>``, their gradients in the pair
  variables (K_aa, K_ab, K_bb), and the Stein weights ``<d_beta (sigma_a sigma'_b)>``;
* the same-neuron moments, P x P:
  ``m4[p, q] = <sigma_a sigma_b sigma_c sigma_d>``, ``mp4 = <sigma' x 4>``,
  ``mmix[p, q] = <sigma_a sigma_b sigma'_c sigma'_d>`` (p = (a, b), q = (c, d)).
  Entries over <= 2 distinct samples come from the pair problems, exactly as
  :func:`~ntkit.finite_width._recursions.pair_statistics` computes them. Entries over 3 or 4
  distinct samples are 3-D / 4-D integrals with no closed form (the note §2.5); they come from
  randomized quasi-Monte Carlo over all N inputs at once (the note's option (ii): one
  (P x R) @ (R x P) product per moment), in connected form and with the delta-method
  control variate (see :func:`_set_moments`).
  Product Gauss-Hermite / trapezoid rules per set were tried first and rejected: at the same
  cost their error was 10-100x larger (tanh at variance >= 1: narrow sigma'^k; ReLU: kinks).
"""

from __future__ import annotations

import torch

from ..layers.rectified import ABReLU
from ._expectations import PairGaussian, _smooth_fn
from ._recursions import _four_point

#: Pairs per PairGaussian call for quadrature activations (as ``corrections``: ~70 MB per batch).
_SMOOTH_PAIRS = 32
_CLOSED_PAIRS = 1 << 14
#: Quasi-Monte Carlo points per chunk: 4 (R x P) float64 arrays, ~70 MB at N = 32.
QMC_CHUNK = 1 << 12


def pair_layout(n: int):
    """``rows, cols`` of the P pairs and the symmetric (N, N) ``pair_index``."""
    rows, cols = torch.triu_indices(n, n)
    index = torch.empty(n, n, dtype=torch.long)
    index[rows, cols] = torch.arange(rows.shape[0])
    index[cols, rows] = torch.arange(rows.shape[0])
    return rows, cols, index


def layer_moments(act, k: torch.Tensor, points: int, seed: int = 0) -> dict:
    """Gaussian statistics of ``sigma(z)``, ``z ~ N(0, k)`` (k: N x N), for the four-point recursions.

    Returns ``g, gp`` (P,), ``jac, jacp`` (P, 3) (the (ab) row: d/dK_aa, d/dK_ab, d/dK_bb),
    ``slots`` (P, 3) (the pair indices of aa, ab, bb), ``stein_a, stein_b`` (N, N) (the weight
    of beta = a, beta = b in ``sum_beta <d_beta(sigma_a sigma'_b)> F_{beta b ..}``), and
    ``m4, mp4, mmix`` (P, P). ``points`` and ``seed`` set the quasi-Monte Carlo rule of the
    entries over 3 and 4 distinct samples.
    """
    n = k.shape[0]
    rows, cols, index = pair_layout(n)
    pairs = rows.shape[0]
    slots = torch.stack([index[rows, rows], index[rows, cols], index[cols, cols]], 1)
    out = {name: k.new_zeros(pairs) for name in ("g", "gp")}
    out.update({name: k.new_zeros(pairs, 3) for name in ("jac", "jacp")})
    stein = k.new_zeros(2, n, n)
    q = torch.stack([k[rows, rows], k[rows, cols], k[cols, cols]], 1)
    same = rows == cols
    # pad every batch with the largest-variance sample: the smooth rule's node count follows
    # the batch's largest variance, so every batch (and pair_statistics on all pairs at once)
    # then uses the same rule
    top = int(torch.argmax(k.diagonal()))
    pad_q, pad_same = k[top, top].expand(1, 3), torch.ones(1, dtype=torch.bool)
    chunk = _CLOSED_PAIRS if isinstance(act, ABReLU) else _SMOOTH_PAIRS
    blocks = {"m4": [], "mp4": [], "mmix": []}
    orders = {"m4": ((0, 0), (0, 0)), "mp4": ((1, 1), (1, 1)), "mmix": ((0, 0), (1, 1))}
    for start in range(0, pairs, chunk):
        part = slice(start, min(start + chunk, pairs))
        gauss = PairGaussian(act, torch.cat([q[part], pad_q]), torch.cat([same[part], pad_same]), hessians=False)
        keep = slice(0, part.stop - part.start)
        out["g"][part], out["gp"][part] = gauss.g[keep, 1], gauss.gp[keep, 1]
        out["jac"][part], out["jacp"][part] = gauss.jac[keep, 1], gauss.jacp[keep, 1]
        for name, (first, second) in orders.items():
            blocks[name].append(_four_point(gauss, first, second)[keep])
        e1 = gauss.stein()[keep]
        r, c = rows[part], cols[part]
        stein[0, r, c], stein[1, r, c] = e1[:, 0, 1, 0], e1[:, 0, 1, 1]  # ordered (a, b), a < b
        stein[0, c, r], stein[1, c, r] = e1[:, 1, 0, 1], e1[:, 1, 0, 0]  # ordered (b, a)
        diagonal = same[part]
        stein[0, r[diagonal], r[diagonal]] = e1[diagonal, 0, 0, 0]  # <sigma'^2 + sigma sigma''>
        stein[1, r[diagonal], r[diagonal]] = 0.0
    out["stein_a"], out["stein_b"], out["slots"] = stein[0], stein[1], slots
    if n >= 3:  # 3 or 4 distinct samples: the rule's connected part plus the exact product
        out.update(_set_moments(act, k, points, seed, out["jac"], out["jacp"], slots))
        exact = {"m4": (out["g"], out["g"]), "mp4": (out["gp"], out["gp"]), "mmix": (out["g"], out["gp"])}
        for name, (left, right) in exact.items():
            out[name] += left[:, None] * right[None, :]
    else:
        out.update({name: k.new_zeros(pairs, pairs) for name in orders})
    for name in orders:  # <= 2 distinct samples: the pair problems' blocks, over the estimates
        out[name][slots[:, :, None], slots[:, None, :]] = torch.cat(blocks[name])
    return out


def _set_moments(act, k: torch.Tensor, points: int, seed: int, jac, jacp, slots) -> dict:
    """The connected parts of m4, mp4, mmix (P, P), by randomized quasi-Monte Carlo with a control variate.

    ``Z = X (U E^{1/2})^T`` with X the inverse-normal image of ``points`` scrambled Sobol points
    in N dimensions, coordinates in decreasing eigenvalue order of K (the leading ones carry
    the most variance, where Sobol points are most uniform); ``psi_p = sigma_a sigma_b``,
    ``psi'_p = sigma'_a sigma'_b``. Control variate: the delta-method term
    ``phi_p = sum_u dg_p/dK_u (z_u1 z_u2 - K_u)`` (u over aa, ab, bb). By Stein's lemma at second
    order, ``Cov(psi_p, phi_q) = Cov(phi_p, phi_q) = (J S J^T)_pq`` exactly, with
    ``S_uv = K_u1v1 K_u2v2 + K_u1v2 K_u2v1``, so

    ``Cov(psi_p, psi_q) = Cov_rule(psi_p - phi_p, psi_q - phi_q) + (J S J^T)_pq``

    (J' for psi'): the rule only integrates the residual beyond the Gaussian (collective) part,
    which is small where sigma is nearly linear on the scale of K.
    """
    n = k.shape[0]
    rows, cols = torch.triu_indices(n, n)
    values, vectors = torch.linalg.eigh(k)
    order = torch.argsort(values, descending=True)
    root = vectors[:, order] * values[order].clamp(min=0).sqrt()
    engine = torch.quasirandom.SobolEngine(n, scramble=True, seed=seed)
    pairs = rows.shape[0]
    sums = {name: k.new_zeros(pairs, pairs) for name in ("m4", "mp4", "mmix")}
    mean, mean_p = k.new_zeros(pairs), k.new_zeros(pairs)
    for start in range(0, points, QMC_CHUNK):  # raw moments by chunks of points: bounded memory
        u = engine.draw(min(QMC_CHUNK, points - start), dtype=k.dtype).clamp(1e-15, 1 - 1e-15)
        z = torch.special.ndtri(u) @ root.T
        value, slope = _value_slope(act, z)
        squares = z * z - k.diagonal()
        centred = (z[:, rows] * z[:, cols] - k[rows, cols], squares[:, rows], squares[:, cols])  # ab, aa, bb
        psi = value[:, rows] * value[:, cols] - _delta_method(centred, jac)
        psi_p = slope[:, rows] * slope[:, cols] - _delta_method(centred, jacp)
        sums["m4"] += psi.T @ psi
        sums["mp4"] += psi_p.T @ psi_p
        sums["mmix"] += psi.T @ psi_p
        mean += psi.sum(0)
        mean_p += psi_p.sum(0)
    mean, mean_p = mean / points, mean_p / points
    gauss = k[rows][:, rows] * k[cols][:, cols] + k[rows][:, cols] * k[cols][:, rows]  # S_uv
    js, jps = left(jac, slots, gauss), left(jacp, slots, gauss)
    parts = {"m4": (mean, mean, js, jac), "mp4": (mean_p, mean_p, jps, jacp), "mmix": (mean, mean_p, js, jacp)}
    return {
        name: sums[name] / points - a[:, None] * b[None, :] + right(first, second, slots)
        for name, (a, b, first, second) in parts.items()
    }


def _delta_method(centred, jac):
    """phi_p = sum_u J[p, u] (z z - K)_u for all pairs, from (ab, aa, bb) columns (R, P) each."""
    return jac[:, 1] * centred[0] + jac[:, 0] * centred[1] + jac[:, 2] * centred[2]


def left(jac, slots, x):
    """(J X)[p, q] = sum_u J[p, u] X[slot_u(p), q]: J acts on the pair variables of the rows."""
    return sum(jac[:, u, None] * x[slots[:, u]] for u in range(3))


def right(x, jac, slots):
    """(X J^T)[p, q] = sum_u X[p, slot_u(q)] J[q, u]: the same on the columns."""
    return sum(x[:, slots[:, u]] * jac[None, :, u] for u in range(3))


def _value_slope(act, z):
    """sigma(z) and sigma'(z) (no graph kept)."""
    if isinstance(act, ABReLU):
        return act.fn(z), torch.where(z < 0, torch.full_like(z, act.a), torch.full_like(z, act.b))
    x = z.detach().requires_grad_(True)
    with torch.enable_grad():
        y = _smooth_fn(act)(x)
        (slope,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), slope
