"""Two-sample Gaussian expectations of ``sigma(z) = A erf(beta z) + C`` with up to four factors.

In ``w = beta z`` (covariance ``S = beta^2 K``) write ``e = erf``, ``e'(w) = (2/sqrt(pi)) exp(-w^2)``,
so ``sigma = A e + C`` and ``sigma' = A beta e'``. Two identities reduce every product of at most
four factors ``sigma``, ``sigma'`` at two samples to elementary functions and, for four factors
``sigma``, a smooth one-dimensional integral:

* **Tilting.** ``e'`` factors are Gaussian weights: for ``r`` factors ``e'`` at u and ``t`` at v,
  with ``T = diag(r, t)``,

  .. math::
      \\mathbb E_S[e'(u)^r e'(v)^t f(u, v)] = (2/\\sqrt\\pi)^{r+t} \\det(I + 2 S T)^{-1/2}\\,
          \\mathbb E_{\\tilde S}[f], \\qquad \\tilde S = (I + 2 S T)^{-1} S,

  and with at most two ``e`` factors left, Williams (1997, eq. 11) gives
  ``E[e(u) e(v)] = (2/pi) arcsin(2 s_uv / sqrt((1 + 2 s_uu)(1 + 2 s_vv)))``; odd products vanish.
* **Price's theorem** in the correlation (``d/ds_uv E[f(u) h(v)] = E[f'(u) h'(v)]``), for four
  factors ``e`` (``E_ij = E[e(u)^i e(v)^j]``, ``i + j = 4``):

  .. math::
      E_{22}(s) = E_{20} E_{02} + 4 \\int_0^{s} \\mathbb E_{c}[e e'(u)\\, e e'(v)]\\,dc, \\qquad
      E_{31}(s) = 3 \\int_0^{s} \\mathbb E_{c}[e^2 e'(u)\\, e'(v)]\\,dc,

  whose integrands are tilted closed forms; ``E_40 = E_22`` at ``u = v``. They are analytic on
  the interval; Gauss-Legendre with ``n`` nodes has error below ``rho_B^(-2n)``, with ``rho_B``
  the Bernstein ellipse through the nearest singularity (the zeros of
  ``(1 + 4 s_uu)(1 + 2 s_vv) - 8 c^2`` and of the arcsin branch ``4c^2 = Q_u Q_v``). Each pair
  gets the smallest node count of ``_NODES`` with ``rho_B^(-2n) <= 1e-15`` (measured: the bound
  exceeds the actual error by 10-100x; error below 3e-13 absolute against a 1000-node rule for
  variances ``beta^2 K`` up to 100 at every correlation). Typical pairs need 4-8 nodes; the
  count grows near |rho| = 1 like ``sqrt(beta^2 K)``, and pairs that would need more than 256
  (``beta^2 K`` above ~300 at |rho| ~ 1) get 256 and lose accuracy.

Layout: pair-last, ``k`` (3, P) = (K_aa, K_ab, K_bb).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

#: Gauss-Legendre node counts a pair may get (error bound rho_B^(-2n) <= _TOLERANCE).
_NODES = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_TOLERANCE = 1e-15
#: Pairs x nodes per block of the correlation integral (~10 such float64 arrays live at once).
_BLOCK = 1 << 20
#: Smallest group of pairs evaluated with its own node count (smaller groups take more nodes).
_MIN_GROUP = 1024
_TWO_OVER_PI = 2 / math.pi


@lru_cache(maxsize=None)
def _legendre(n: int):
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


def _tilted_pair(sa, sc, sb, r: int, t: int):
    """``(2/sqrt(pi))^(r+t) det(I + 2 S T)^(-1/2)`` and the tilted ``(s_uu, s_uv, s_vv)``."""
    det = (1 + 2 * r * sa) * (1 + 2 * t * sb) - 4 * r * t * sc * sc
    weight = (2 / math.sqrt(math.pi)) ** (r + t) * torch.rsqrt(det)
    tilted_a = ((1 + 2 * t * sb) * sa - 2 * t * sc * sc) / det
    return weight, tilted_a, sc / det, ((1 + 2 * r * sa) * sb - 2 * r * sc * sc) / det


def _second(sa, sc, sb):
    """``E[e(u)^2], E[e(u) e(v)], E[e(v)^2]`` (Williams 1997, eq. 11)."""
    return (
        _TWO_OVER_PI * torch.arcsin(2 * sa / (1 + 2 * sa)),
        _TWO_OVER_PI * torch.arcsin(2 * sc * torch.rsqrt((1 + 2 * sa) * (1 + 2 * sb))),
        _TWO_OVER_PI * torch.arcsin(2 * sb / (1 + 2 * sb)),
    )


def _node_counts(sa, sc, sb) -> torch.Tensor:
    """Per pair, the Gauss-Legendre order for the correlation integral over [0, s_uv]."""
    a1, a2 = (1 + 4 * sa) * (1 + 2 * sb), (1 + 2 * sa) * (1 + 4 * sb)
    # 4 c^2 = Q_u Q_v with Q = a - 8 c^2: 64 X^2 - (8 a1 + 8 a2 + 4) X + a1 a2 = 0 in X = c^2
    b = 8 * (a1 + a2) + 4
    disc = b * b - 256 * a1 * a2
    branch = torch.where(disc >= 0, (b - torch.sqrt(disc.clamp(min=0))) / 128, torch.full_like(b, math.inf))
    nearest = torch.sqrt(torch.minimum(branch, torch.minimum(a1, a2) / 8))
    x = (2 * nearest / sc.abs().clamp(min=1e-300) - 1).clamp(min=1 + 1e-12)
    log_rho = torch.log(x + torch.sqrt(x * x - 1))
    return math.log(1 / _TOLERANCE) / (2 * log_rho)


def _four(sa, sc, sb, e20, e02):
    """``E_22, E_31, E_13`` by the correlation integral, each pair with its own node count: (P,) x 3.

    Pairs are grouped by node count; a group smaller than ``_MIN_GROUP`` joins the next non-empty
    one (more nodes), which bounds the number of (whole-batch) evaluations.
    """
    out = [torch.empty_like(sa) for _ in range(3)]
    bounds = torch.tensor(_NODES, dtype=sa.dtype, device=sa.device)
    bucket = torch.bucketize(_node_counts(sa, sc, sb), bounds).clamp_(max=len(_NODES) - 1)
    order = torch.argsort(bucket)
    counts = torch.bincount(bucket, minlength=len(_NODES)).tolist()
    last = max(i for i, count in enumerate(counts) if count) if sa.numel() else -1
    start, carry = 0, order[:0]
    for i, count in enumerate(counts[: last + 1]):
        group = torch.cat([carry, order[start : start + count]])
        start += count
        if group.numel() < _MIN_GROUP and i < last:
            carry = group
            continue
        carry = order[:0]
        for index in group.split(max(1, _BLOCK // _NODES[i])):
            values = _four_rule(sa[index], sc[index], sb[index], e20[index], e02[index], _NODES[i])
            for target, value in zip(out, values):
                target[index] = value
    return out


def _four_rule(sa, sc, sb, e20, e02, n: int):
    """The three correlation integrals on ``n`` Gauss-Legendre nodes, tilted closed forms inside."""
    nodes, weights = _legendre_tensors(n, sa.dtype, sa.device)
    pa, pb = 1 + 2 * sa, 1 + 2 * sb
    # per pair: (1+2a)(1+2b), (1+4a)(1+2b), (1+2a)(1+4b), 2a(1+2b), 2b(1+2a)
    per_pair = [pa * pb, (pa + 2 * sa) * pb, pa * (pb + 2 * sb), 2 * sa * pb, 2 * sb * pa]
    a0, a1, a2, ua, ub = torch.stack(per_pair)[:, :, None]
    c = sc[:, None] * nodes  # (P, n)
    c2 = c * c
    tilt = torch.add(a0, c2, alpha=-4).rsqrt_()  # E[e'(u) e'(v)] at correlation c, over (2/sqrt(pi))^2
    qa, qb = torch.add(a1, c2, alpha=-8), torch.add(a2, c2, alpha=-8)
    uv = (qa * qb).rsqrt_().mul_(c).mul_(2).arcsin_().mul_(tilt)
    uu = torch.add(ua, c2, alpha=-4).div_(qa).arcsin_().mul_(tilt)
    vv = torch.add(ub, c2, alpha=-4).div_(qb).arcsin_().mul_(tilt)
    scale = sc * (_TWO_OVER_PI * 4 / math.pi)  # ds * (2/pi) from arcsin * (4/pi) from the tilt
    e22 = torch.addcmul(e20 * e02, scale, uv @ weights, value=4)
    return e22, 3 * scale * (uu @ weights), 3 * scale * (vv @ weights)


@lru_cache(maxsize=None)
def _legendre_tensors(n: int, dtype, device):
    return tuple(torch.as_tensor(t, dtype=dtype, device=device) for t in _legendre(n))


def _fourth_moments(s):
    """``E[e(u)^4]`` for u ~ N(0, s): E_22 at u = v; once per distinct variance."""
    values, inverse = torch.unique(s, return_inverse=True)
    e2 = _TWO_OVER_PI * torch.arcsin(2 * values / (1 + 2 * values))
    return _four(values, values, values, e2, e2)[0][inverse]


def _low_moments(sa, sc, sb) -> dict:
    """``E[e(u)^i e(v)^j]`` for i + j in {0, 2}, keyed (i, j)."""
    e20, e11, e02 = _second(sa, sc, sb)
    return {(0, 0): torch.ones_like(sa), (2, 0): e20, (1, 1): e11, (0, 2): e02}


def _even_moments(sa, sc, sb) -> dict:
    """``E[e(u)^i e(v)^j]`` for i + j in {0, 2, 4} (odd ones vanish), keyed (i, j)."""
    out = _low_moments(sa, sc, sb)
    out[(2, 2)], out[(3, 1)], out[(1, 3)] = _four(sa, sc, sb, out[(2, 0)], out[(0, 2)])
    out[(4, 0)], out[(0, 4)] = _fourth_moments(torch.cat([sa, sb])).split(sa.shape[0])
    return out


def _affine(moments: dict, p: int, q: int, amp: float, shift: float):
    """``E[(A e_u + C)^p (A e_v + C)^q]`` from the even moments ``E[e_u^i e_v^j]``."""
    total = 0.0
    for i in range(p + 1):
        for j in range(q + 1):
            if (i + j) % 2 == 0 and (shift != 0 or (i, j) == (p, q)):
                coef = math.comb(p, i) * math.comb(q, j) * amp ** (i + j) * shift ** (p + q - i - j)
                total = total + coef * moments[(i, j)]
    return total


def products(act, k: torch.Tensor, combos) -> torch.Tensor:
    """``E[sigma_u^p sigma_v^q sigma'_u^r sigma'_v^t]`` for ``combos = ((p, q, r, t), ...)``: (len, P).

    Needs ``p + q + r + t <= 4``.
    """
    amp, beta, shift = act.a, act.b, act.c
    sa, sc, sb = beta * beta * k
    plain: dict = {}
    tilts: dict = {}
    out = []
    for p, q, r, t in combos:
        if r + t == 0:
            if p + q == 4 and (4, 0) not in plain:
                plain = _even_moments(sa, sc, sb)
            elif not plain:
                plain = _low_moments(sa, sc, sb)
            out.append(_affine(plain, p, q, amp, shift) * torch.ones_like(sa))
            continue
        if (r, t) not in tilts:
            weight, ta, tc, tb = _tilted_pair(sa, sc, sb, r, t)
            tilts[(r, t)] = (weight, _low_moments(ta, tc, tb))
        weight, moments = tilts[(r, t)]
        out.append((amp * beta) ** (r + t) * weight * _affine(moments, p, q, amp, shift))
    return torch.stack(out)


def kernel_derivatives(act, k: torch.Tensor, same: torch.Tensor) -> dict:
    """``g, gp`` (3, P) and their first and second derivatives in the pair variables (see ``_relu_pairs``).

    Williams (1997, eq. 11) with ``B = 2 beta^2``, ``G = 2 A^2 / pi``, ``d_a = 1 + B K_aa``,
    ``x = B K_ab``, ``Delta = d_a d_b - x^2``: ``g = G arcsin(x / sqrt(d_a d_b)) + C^2``,
    ``gp = G B Delta^(-1/2)``; one sample: ``g = G arcsin(B K / (1 + B K)) + C^2``,
    ``gp = G B (1 + 2 B K)^(-1/2)``. Differentiated by hand (``dg/dK_ab = gp``, Price):
    ``dg/dK_aa = -G B x / (2 d_a sqrt(Delta))``; ``gp``'s derivatives are those of ``Delta^(-1/2)``.
    """
    amp, beta, shift = act.a, act.b, act.c
    big_b, big_g = 2 * beta * beta, 2 * amp * amp / math.pi
    kaa, kab, kbb = k
    singles = [_single_derivatives(kk, big_b, big_g, shift) for kk in (kaa, kbb)]
    da, db = 1 + big_b * kaa, 1 + big_b * kbb
    x = big_b * torch.where(same, torch.zeros_like(kab), kab)
    rd = torch.rsqrt(da * db - x * x)
    rd3 = rd * rd * rd
    gp1 = big_g * big_b * rd
    half = big_g * big_b * big_b / 2
    jp = torch.stack([-half * rd3 * db, 2 * half * rd3 * x, -half * rd3 * da])  # dgp/dK_u
    # d^2 Delta^(-1/2) = 3/4 Delta^(-5/2) dDelta dDelta - 1/2 Delta^(-3/2) d^2 Delta
    grad = torch.stack([big_b * db, -2 * big_b * x, big_b * da])  # dDelta/dK_u
    outer = 0.75 * big_g * big_b * (rd3 * rd * rd) * (grad[:, None] * grad[None])
    second = torch.tensor([[0.0, 0.0, 1.0], [0.0, -2.0, 0.0], [1.0, 0.0, 0.0]], dtype=k.dtype, device=k.device)
    hp = outer - (0.5 * big_g * big_b**3) * rd3 * second[:, :, None]
    h00 = half * x * (rd / (da * da) + 0.5 * db * rd3 / da)
    h22 = half * x * (rd / (db * db) + 0.5 * da * rd3 / db)
    h02 = 0.5 * half * x * rd3
    h = torch.stack([h00, jp[0], h02, jp[0], jp[1], jp[2], h02, jp[2], h22]).reshape(3, 3, -1)
    first = singles[0]
    zero = torch.zeros_like(kaa)
    g1 = big_g * torch.arcsin(x * torch.rsqrt(da * db)) + shift**2
    slope = 0.5 * big_g * big_b * x * rd  # -dg/dK_aa times d_a
    on_diagonal = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=k.dtype, device=k.device)[:, :, None]
    return {
        "g": torch.stack([first["g"], torch.where(same, first["g"], g1), singles[1]["g"]]),
        "gp": torch.stack([first["gp"], torch.where(same, first["gp"], gp1), singles[1]["gp"]]),
        "jac_self": torch.stack([first["jac"], singles[1]["jac"]]),
        "jac_ab": torch.where(
            same, torch.stack([first["jac"], zero, zero]), torch.stack([-slope / da, gp1, -slope / db])
        ),
        "hess_self": torch.stack([first["hess"], singles[1]["hess"]]),
        "hess_ab": torch.where(same, on_diagonal * first["hess"], h),
        "jacp_self": torch.stack([first["jacp"], singles[1]["jacp"]]),
        "jacp_ab": torch.where(same, torch.stack([first["jacp"], zero, zero]), jp),
        "hessp_self": torch.stack([first["hessp"], singles[1]["hessp"]]),
        "hessp_ab": torch.where(same, on_diagonal * first["hessp"], hp),
    }


def _single_derivatives(k, big_b: float, big_g: float, shift: float) -> dict:
    d, e = 1 + big_b * k, 1 + 2 * big_b * k
    re = torch.rsqrt(e)
    return {
        "g": big_g * torch.arcsin(big_b * k / d) + shift**2,
        "jac": big_g * big_b * re / d,
        "hess": -big_g * big_b * big_b * (2 + 3 * big_b * k) * re / (d * d * e),
        "gp": big_g * big_b * re,
        "jacp": -big_g * big_b * big_b * re / e,
        "hessp": 3 * big_g * big_b**3 * re / (e * e),
    }
