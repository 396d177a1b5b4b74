"""The pair recursions of ``_recursions`` for the ReLU family, fused into one compiled loop.

:func:`~ntkit.finite_width._recursions.propagate` carries a batch of pairs through the layers
with a few hundred whole-batch torch operations per layer, each reading and writing (P,) rows:
bound by memory traffic (~1 us per pair and layer). When every activation is an
:class:`~ntkit.ABReLU` (``sigma(z) = a min(z, 0) + b max(z, 0)``, slopes per layer), this module
does the same arithmetic pair by pair in one Numba loop (spread over torch's threads by
:func:`ntkit._compiled.run_rows`): each pair goes through all layers with its state (K, Theta,
K^1, Theta^1: 3 slots each; V, D: 3x3; F: 2x2x2x2) in registers, and only the output layer's
state is written. Per layer, after the correlation
angle (``theta = arccos c``, computed once), three inline steps:

* :func:`_products`: ``m4`` and ``md``, the four-factor products of ``_relu_pairs.products``
  (Cho & Saul 2009, eq. 5-6). That module's (14, 12) weight matrix ``_weights`` is the same sum
  grouped by quadrant: each combo ``(p, q, r, t)`` is ``f_++ X_+ + f_+- X_-`` with the quadrant
  moments ``X_+ = A(c) (pi - theta) + B(c) sin(theta)``, ``X_- = A(-c) theta + B(-c) sin(theta)``
  of ``ORTHANT[(p, q)]`` (five distinct ones) and two slope factors per combo
  (:func:`quadrant_weights`), times the scale ``K_aa^(p/2) K_bb^(q/2)``;
* :func:`_derivatives`: ``g, gp`` and their Jacobians and Hessians in the pair variables, the
  hand derivatives of ``_relu_pairs.kernel_derivatives`` (Price's theorem), with its clamp of
  distinct samples' correlations to +-(1 - 1e-7) (``free``) and its ``same`` pairs;
* :func:`_advance_vd`, the K^1 / Theta^1 lines of :func:`_layer` and :func:`_advance_f`: the
  recursions of ``_recursions._advance`` (the note §2.1-2.2; RYH §4.3 for V, §4.5 for K^1,
  §8.3 for D, F and Theta^1), written out for the ReLU family's sparse derivatives:
  ``dg_aa/dK_aa = (a^2 + b^2) / 2`` and the diagonal slots' Hessians and ``gp``-Jacobians
  vanish, so those terms (exact zeros there) are dropped.

The formulas follow the torch code term by term, so the two agree to round-off (1e-12 of the
largest entry of each statistic, ``tests/test_compiled_pairs.py``; where a statistic is itself
ill-conditioned, e.g. Theta^1 of distinct samples at 1 - |rho| ~ 1e-6, within the torch
path's own round-off). The torch path stays the reference and the fallback (no Numba,
``NTKIT_DISABLE_NUMBA=1``, other activations, GPU tensors). float64 only.

Tuples index the slots as in ``_recursions``: ``K[w]`` with w in (aa, ab, bb), ``V[3 u + w]``,
``F[8 a + 4 b + 2 c + d]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._compiled import run_rows
from .._compiled._jit import arccos, jit
from ._pair_moments import FOUR, MIXED
from ._relu_pairs import _RHO_EPS

#: The output rows (pair-last) of each statistic and its shape per pair.
LAYOUT = (("K", (3,)), ("T", (3,)), ("K1", (3,)), ("T1", (3,)), ("V", (3, 3)), ("D", (3, 3)), ("F", (2, 2, 2, 2)))
ROWS = 46
#: With ``cross_only``: the (a, b) slot of K, T, K1, T1.
CROSS_ROWS = 4
#: Work per pair and layer in the units of ``run_rows`` (entries of a simple kernel map).
_COST = 32
_LOW, _HIGH = -1 + _RHO_EPS, 1 - _RHO_EPS
#: The angle of the clamped correlations and its sine.
_THETA_LOW, _THETA_HIGH = math.acos(_LOW), math.acos(_HIGH)
_SINE_LOW, _SINE_HIGH = math.sin(_THETA_LOW), math.sin(_THETA_HIGH)


def propagate(spec, q: torch.Tensor, same: torch.Tensor, cross_only: bool = False):
    """:func:`~ntkit.finite_width._recursions.propagate` for ReLU-family MLPs: the same dict
    (pair-last ``K, T, K1, T1`` (3, P), ``V, D`` (3, 3, P), ``F`` (2, 2, 2, 2, P)), float64.

    ``cross_only``: instead, the (a, b) slots of K, T, K1, T1 as a (4, P) tensor, all that
    :func:`~ntkit.finite_width.corrections` reads (a tenth of the writes)."""
    acts = spec.activations
    layers = np.array(
        [
            [(act.a * act.a + act.b * act.b) / 2, (act.a - act.b) ** 2 / (2 * math.pi),
             spec.c_w[i + 1], spec.c_b[i + 1], spec.lambda_w[i + 1], spec.lambda_b[i + 1]]
            for i, act in enumerate(acts)
        ],
        dtype=np.float64,
    ).reshape(len(acts), 6)
    weights = np.zeros((len(acts) * 14, 2))
    for i, act in enumerate(acts):
        weights[14 * i : 14 * i + 14] = quadrant_weights(act.a, act.b)
    first = np.array([spec.c_w[0], spec.c_b[0], spec.lambda_w[0], spec.lambda_b[0]], dtype=np.float64)
    q = q.detach().to(torch.float64).contiguous().numpy()
    same = same.detach().contiguous().numpy()
    out = np.empty((CROSS_ROWS if cross_only else ROWS, q.shape[0]))
    run_rows(propagate_pairs, q.shape[0], q, same, first, layers, weights, out, cost=_COST * max(1, len(acts)))
    if cross_only:
        return torch.from_numpy(out)
    result, row = {}, 0
    for name, shape in LAYOUT:
        size = math.prod(shape)
        result[name] = torch.from_numpy(out[row : row + size]).reshape(*shape, -1)
        row += size
    return result


@jit
def propagate_pairs(start, stop, q, same, first, layers, weights, out):
    """Pairs ``start:stop`` (rows of ``q`` (P, 3)) through all layers; their output state into
    ``out[:, start:stop]``.

    ``first`` = (C_W, C_b, lambda_W, lambda_b) of layer 1; ``layers`` (L - 1, 6) per hidden layer
    ``((a^2 + b^2) / 2, (a - b)^2 / (2 pi))`` of its activation and the four coefficients of the
    next Dense; ``weights`` ((L - 1) 14, 2) the activations' :func:`quadrant_weights`, stacked.
    """
    for i in range(start, stop):
        _one_pair(q, same, first, layers, weights, out, i)


@jit
def _one_pair(q, same, first, layers, weights, out, i):
    """Pair ``i`` through all layers; LLVM inlines the steps below into this one function, with
    the state in registers."""
    c_w, c_b, l_w, l_b = first[0], first[1], first[2], first[3]
    x = (q[i, 0], q[i, 1], q[i, 2])
    k = (c_b + c_w * x[0], c_b + c_w * x[1], c_b + c_w * x[2])
    t = (l_b + l_w * x[0], l_b + l_w * x[1], l_b + l_w * x[2])
    k1 = t1 = (0.0, 0.0, 0.0)
    v = d = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    f = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for layer in range(layers.shape[0]):
        k, t, k1, t1, v, d, f = _layer(k, t, k1, t1, v, d, f, same[i], layers, weights, layer)
    if out.shape[0] == CROSS_ROWS:
        out[0, i], out[1, i], out[2, i], out[3, i] = k[1], t[1], k1[1], t1[1]
        return
    for j in range(3):
        out[j, i] = k[j]
        out[3 + j, i] = t[j]
        out[6 + j, i] = k1[j]
        out[9 + j, i] = t1[j]
    for j in range(9):
        out[12 + j, i] = v[j]
        out[21 + j, i] = d[j]
    for j in range(16):
        out[30 + j, i] = f[j]


@jit(inline="always")
def _layer(k, t, k1, t1, v, d, f, same, layers, weights, layer):
    """One hidden layer and the next Dense (``_recursions._advance``) for one pair."""
    ms, kink, c_w = layers[layer, 0], layers[layer, 1], layers[layer, 2]
    c_b, l_w, l_b = layers[layer, 3], layers[layer, 4], layers[layer, 5]
    norm = math.sqrt(k[0] * k[2])
    rho = k[1] / norm
    c = min(max(rho, -1.0), 1.0)
    theta, sine = arccos(c), math.sqrt((1 - c) * (1 + c))
    m4, md = _products(k[0], k[2], c, theta, sine, weights, 14 * layer)
    g, gp1, r, h, rp, hp = _derivatives(k[0], k[1], k[2], norm, rho, theta, sine, same, ms, kink)
    gp = (ms, gp1, ms)
    v_new, d_new, sn = _advance_vd(m4, md, g, gp, ms, r, rp, t, v, d, c_w, l_w)
    # K^1 and Theta^1: s_w = J_w K1 + 1/2 H_w : V (s' with Jp, Hp; zero in the diagonal slots)
    shift = (ms * k1[0], r[0] * k1[0] + r[1] * k1[1] + r[2] * k1[2] + 0.5 * _contract(h, v), ms * k1[2])
    shift_p = rp[0] * k1[0] + rp[1] * k1[1] + rp[2] * k1[2] + 0.5 * _contract(hp, v)
    jpd = rp[0] * d[1] + rp[1] * d[4] + rp[2] * d[7]  # sum_u Jp[ab, u] D[u, ab]
    cross = (f[1] + f[4]) * rp[0] + (f[3] + f[6]) * rp[1] + (f[11] + f[14]) * rp[2]  # the F term
    t1_new = (
        l_w * shift[0] + c_w * (gp[0] * t1[0]),
        l_w * shift[1] + c_w * (shift_p * t[1] + gp[1] * t1[1] + jpd + cross),
        l_w * shift[2] + c_w * (gp[2] * t1[2]),
    )
    k_new = (c_b + c_w * g[0], c_b + c_w * g[1], c_b + c_w * g[2])
    t_new = (l_b + l_w * g[0] + c_w * (gp[0] * t[0]), l_b + l_w * g[1] + c_w * (gp[1] * t[1]),
             l_b + l_w * g[2] + c_w * (gp[2] * t[2]))
    k1_new = (c_w * shift[0], c_w * shift[1], c_w * shift[2])
    f_new = _advance_f(f, sn, same, ms, gp1, r, c_w)
    return k_new, t_new, k1_new, t1_new, v_new, d_new, f_new


@jit
def _contract(h, v):
    """``sum_uv H[u, v] V[u, v]`` of two 3x3 tuples."""
    total = h[0] * v[0]
    for j in range(1, 9):
        total += h[j] * v[j]
    return total


@jit
def _product(w, i, plus, minus, scale):
    """Row ``i`` of ``_relu_pairs.products``: its two quadrant sums times ``scale``."""
    return (w[i, 0] * plus + w[i, 1] * minus) * scale


@jit(inline="always")
def _products(kaa, kbb, c, theta, sine, w, row):
    """``m4`` (5: ``<sigma^4>`` by slot sum) and ``md`` (3x3: ``<sigma_i sigma_j sigma'_k sigma'_l>``)
    of one pair, as ``_relu_pairs.products(a, b, k, FOUR + MIXED)``; ``c`` the correlation
    (clamped to [-1, 1]), ``theta = arccos c``, ``sine = sin theta``, ``w[row:row + 14]`` the
    quadrant weights (:func:`quadrant_weights`).

    ``ORTHANT``'s moments ``A(c) (pi - theta) + B(c) sin`` (quadrants (+, +), (-, -)) and
    ``A(-c) theta + B(-c) sin`` ((+, -), (-, +)), for the five (p, q) up to symmetry."""
    arc, c2 = math.pi - theta, c * c
    b40 = c * (5 - 2 * c2)  # (4, 0), (0, 4): A = 3, B = 5 c - 2 c^3
    plus40, minus40 = 3 * arc + b40 * sine, 3 * theta - b40 * sine
    b31 = 2 + c2  # (3, 1), (1, 3): A = 3 c, B = 2 + c^2
    plus31, minus31 = 3 * c * arc + b31 * sine, b31 * sine - 3 * c * theta
    a22 = 1 + 2 * c2  # (2, 2): A = 1 + 2 c^2, B = 3 c
    plus22, minus22 = a22 * arc + 3 * c * sine, a22 * theta - 3 * c * sine
    plus20, minus20 = arc + c * sine, theta - c * sine  # (2, 0), (0, 2): A = 1, B = c
    plus11, minus11 = c * arc + sine, sine - c * theta  # (1, 1): A = c, B = 1
    su, sv = math.sqrt(kaa), math.sqrt(kbb)
    suv = su * sv
    m4 = (
        _product(w, row, plus40, minus40, kaa * kaa),
        _product(w, row + 1, plus31, minus31, kaa * su * sv),
        _product(w, row + 2, plus22, minus22, kaa * kbb),
        _product(w, row + 3, plus31, minus31, su * (kbb * sv)),
        _product(w, row + 4, plus40, minus40, kbb * kbb),
    )
    md = (
        _product(w, row + 5, plus20, minus20, kaa),
        _product(w, row + 6, plus20, minus20, kaa),
        _product(w, row + 7, plus20, minus20, kaa),
        _product(w, row + 8, plus11, minus11, suv),
        _product(w, row + 9, plus11, minus11, suv),
        _product(w, row + 10, plus11, minus11, suv),
        _product(w, row + 11, plus20, minus20, kbb),
        _product(w, row + 12, plus20, minus20, kbb),
        _product(w, row + 13, plus20, minus20, kbb),
    )
    return m4, md


def quadrant_weights(a: float, b: float) -> np.ndarray:
    """(14, 2): per combo of ``FOUR + MIXED`` the factors of its quadrant pairs, over 2 pi.

    As in ``_relu_pairs._weights``: for ``(p, q, r, t)`` with ``nu = p + r``, ``nv = q + t``,
    (+, +) and (-, -) add up to ``b^(nu + nv) + (-1)^(p + q) a^(nu + nv)`` times the (+, +)
    moment, (+, -) and (-, +) to ``(-1)^q b^nu a^nv + (-1)^p a^nu b^nv`` times the (+, -) one.
    """
    out = np.empty((len(FOUR + MIXED), 2))
    for row, (p, q, r, t) in enumerate(FOUR + MIXED):
        nu, nv = p + r, q + t
        out[row, 0] = b ** (nu + nv) + (-1) ** (p + q) * a ** (nu + nv)
        out[row, 1] = (-1) ** q * b**nu * a**nv + (-1) ** p * a**nu * b**nv
    return out / (2 * math.pi)


@jit(inline="always")
def _derivatives(kaa, kab, kbb, norm, rho, theta, sine, same, ms, kink):
    """``_relu_pairs.kernel_derivatives`` of one pair: ``g`` (3), ``gp[ab]``, the ab rows of the
    Jacobians ``r = dg_ab/dK``, ``rp = dgp_ab/dK`` (3) and Hessians ``h``, ``hp`` (3x3).

    ``norm = sqrt(K_aa K_bb)``, ``rho = K_ab / norm``; ``theta``, ``sine``: the angle of ``rho``,
    replaced here by that of the clamped correlation +-(1 - 1e-7) outside the clamp."""
    inside = rho > _LOW and rho < _HIGH
    free = inside and not same  # theta moves with K
    if not inside:
        theta, sine = (_THETA_HIGH, _SINE_HIGH) if rho >= _HIGH else (_THETA_LOW, _SINE_LOW)
    delta = norm * sine
    inv = 1.0 / delta if free else 0.0
    other = 0.0 if same else 1.0
    half_a, half_b = 0.5 / kaa, 0.5 / kbb
    gp1 = ms - kink * theta
    kd, hk = kink * delta, kink * kab * inv
    curve = hk * kab
    h01, h12 = -hk * half_a, -hk * half_b  # also dgp_ab/dK_aa, dgp_ab/dK_bb (Price)
    h00 = other * (curve - kd) * (half_a * half_a)
    h02 = other * (curve + kd) * (half_a * half_b)
    h22 = other * (curve - kd) * (half_b * half_b)
    inv3 = inv * inv * inv
    p01, p12, p02 = -0.5 * kink * kbb * inv3, -0.5 * kink * kaa * inv3, 0.25 * kink * kab * inv3
    p00 = kink * kab * (inv * (2 * half_a * half_a) + kbb * inv3 * (0.5 * half_a))
    p22 = kink * kab * (inv * (2 * half_b * half_b) + kaa * inv3 * (0.5 * half_b))
    g = (ms * kaa, ms * kaa if same else kd + gp1 * kab, ms * kbb)
    r = (ms if same else kd * half_a, other * gp1, other * kd * half_b)
    h = (h00, h01, h02, h01, kink * inv, h12, h02, h12, h22)
    rp = (h01, kink * inv, h12)
    hp = (p00, p01, p02, p01, kink * kab * inv3, p12, p02, p12, p22)
    return g, ms if same else gp1, r, h, rp, hp


@jit(inline="always")
def _advance_vd(m4, md, g, gp, j, r, rp, t, v, d, c_w, l_w):
    """``V' = C_W^2 N`` and ``D'`` of ``_recursions._advance``, and the same-neuron term
    ``C_W^2 md[w, u] Theta_u`` (3x3) that D and F share. ``j`` = dg_aa/dK_aa = dg_bb/dK_bb."""
    cw2 = c_w * c_w
    a0 = r[0] * v[0] + r[1] * v[3] + r[2] * v[6]  # (J V)[ab, x]
    a1 = r[0] * v[1] + r[1] * v[4] + r[2] * v[7]
    a2 = r[0] * v[2] + r[1] * v[5] + r[2] * v[8]
    n00 = m4[0] - g[0] * g[0] + j * j * v[0]
    n01 = m4[1] - g[0] * g[1] + j * a0
    n02 = m4[2] - g[0] * g[2] + j * j * v[2]
    n11 = m4[2] - g[1] * g[1] + (r[0] * a0 + r[1] * a1 + r[2] * a2)
    n12 = m4[3] - g[1] * g[2] + j * a2
    n22 = m4[4] - g[2] * g[2] + j * j * v[8]
    n = (n00, n01, n02, n01, n11, n12, n02, n12, n22)
    # J V Jp^T: only its ab column is non-zero (Jp's diagonal rows vanish)
    jvjp = (j * (v[0] * rp[0] + v[1] * rp[1] + v[2] * rp[2]), a0 * rp[0] + a1 * rp[1] + a2 * rp[2],
            j * (v[6] * rp[0] + v[7] * rp[1] + v[8] * rp[2]))
    sn = (
        md[0] * t[0] * cw2, md[1] * t[1] * cw2, md[2] * t[2] * cw2,
        md[3] * t[0] * cw2, md[4] * t[1] * cw2, md[5] * t[2] * cw2,
        md[6] * t[0] * cw2, md[7] * t[1] * cw2, md[8] * t[2] * cw2,
    )
    cl = c_w * l_w
    d_new = (
        _d_entry(sn[0], n[0], cl, cw2, 0.0, j * d[0], gp[0], g[0], t[0]),
        _d_entry(sn[1], n[1], cl, cw2, jvjp[0] * t[1], j * d[1], gp[1], g[0], t[1]),
        _d_entry(sn[2], n[2], cl, cw2, 0.0, j * d[2], gp[2], g[0], t[2]),
        _d_entry(sn[3], n[3], cl, cw2, 0.0, r[0] * d[0] + r[1] * d[3] + r[2] * d[6], gp[0], g[1], t[0]),
        _d_entry(sn[4], n[4], cl, cw2, jvjp[1] * t[1], r[0] * d[1] + r[1] * d[4] + r[2] * d[7], gp[1], g[1], t[1]),
        _d_entry(sn[5], n[5], cl, cw2, 0.0, r[0] * d[2] + r[1] * d[5] + r[2] * d[8], gp[2], g[1], t[2]),
        _d_entry(sn[6], n[6], cl, cw2, 0.0, j * d[6], gp[0], g[2], t[0]),
        _d_entry(sn[7], n[7], cl, cw2, jvjp[2] * t[1], j * d[7], gp[1], g[2], t[1]),
        _d_entry(sn[8], n[8], cl, cw2, 0.0, j * d[8], gp[2], g[2], t[2]),
    )
    v_new = (cw2 * n00, cw2 * n01, cw2 * n02, cw2 * n01, cw2 * n11, cw2 * n12, cw2 * n02, cw2 * n12, cw2 * n22)
    return v_new, d_new, sn


@jit
def _d_entry(sn, n, cl, cw2, jvjp_theta, jd, gp, g, theta):
    """``D'[w, u] = C_W^2 md Theta + C_W l_W N + C_W^2 (J V Jp^T Theta + J D gp - g gp Theta)``."""
    return sn + cl * n + (jvjp_theta + jd * gp - g * (gp * theta)) * cw2


@jit(inline="always")
def _advance_f(f, sn, same, ms, gp1, r, c_w):
    """``F'_abcd = C_W^2 [md[a+c, b+d] Theta_{b+d} + sum_ij E_abi E_cdj F_ibjd]`` (``_f_advance``).

    For fixed (b, d) the sum is ``M_b F[:, b, :, d] M_d^T`` with the 2x2 Stein matrices
    ``M_0 = C_W [[J, 0], [E_100, gp]]``, ``M_1 = C_W [[gp, E_011], [0, J]]``; the (1, 0) block is
    the transpose of the (0, 1) block.
    """
    j, gpc = ms * c_w, gp1 * c_w
    # <sigma_i sigma''_j> = 2 dg_ab/dK_jj; for identical samples <sigma sigma''> = dg - <sigma'^2>
    e011 = j - gpc if same else (2 * c_w) * r[2]
    e100 = j - gpc if same else (2 * c_w) * r[0]
    m0, m1 = (j, 0.0, e100, gpc), (gpc, e011, 0.0, j)
    b00 = _sandwich(m0, (f[0], f[2], f[8], f[10]), m0)  # F[i, 0, k, 0]
    b01 = _sandwich(m0, (f[1], f[3], f[9], f[11]), m1)  # F[i, 0, k, 1]
    b11 = _sandwich(m1, (f[5], f[7], f[13], f[15]), m1)  # F[i, 1, k, 1]
    return (
        b00[0] + sn[0], b01[0] + sn[1], b00[1] + sn[3], b01[1] + sn[4],
        b01[0] + sn[1], b11[0] + sn[2], b01[2] + sn[4], b11[1] + sn[5],
        b00[2] + sn[3], b01[2] + sn[4], b00[3] + sn[6], b01[3] + sn[7],
        b01[1] + sn[4], b11[2] + sn[5], b01[3] + sn[7], b11[3] + sn[8],
    )


@jit
def _sandwich(left, block, right):
    """``L B R^T`` for 2x2 matrices as row-major 4-tuples."""
    h0 = left[0] * block[0] + left[1] * block[2]
    h1 = left[0] * block[1] + left[1] * block[3]
    h2 = left[2] * block[0] + left[3] * block[2]
    h3 = left[2] * block[1] + left[3] * block[3]
    return (h0 * right[0] + h1 * right[1], h0 * right[2] + h1 * right[3],
            h2 * right[0] + h3 * right[1], h2 * right[2] + h3 * right[3])
