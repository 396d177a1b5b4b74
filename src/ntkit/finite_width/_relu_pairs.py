"""Closed-form two-sample Gaussian expectations of the ReLU family, for many pairs at once.

``sigma(z) = a min(z, 0) + b max(z, 0)`` (:class:`~ntkit.ABReLU`). For
``(u, v) ~ N(0, [[K_aa, K_ab], [K_ab, K_bb]])`` with ``cos(theta) = K_ab / sqrt(K_aa K_bb)``,
every product of ``p`` factors ``sigma`` and ``r`` factors ``sigma'`` at u and ``q``, ``t`` at v
is a sum over the four sign quadrants of ``slope^(p + r) slope^(q + t) E[u^p v^q; quadrant]``.
With standardized ``x = u / sqrt(K_aa)``, ``y = v / sqrt(K_bb)`` written in polar coordinates
(``x = r cos(phi)``, ``y = r cos(phi - theta)``), the positive-quadrant moment is the
arc-cosine integral of Cho & Saul (2009, eq. 5-6):

.. math::
    2\\pi\\,\\mathbb E[x^p y^q;\\, x>0, y>0]
      = \\mathbb E[r^{p+q}] \\int_{\\theta-\\pi/2}^{\\pi/2} \\cos^p\\phi \\cos^q(\\phi-\\theta)\\,d\\phi
      = A_{pq}(\\cos\\theta)\\,(\\pi - \\theta) + B_{pq}(\\cos\\theta)\\,\\sin\\theta,

with polynomials A, B (derived symbolically; ``p + q = 2``: Cho & Saul's J_1; ``(2, 2)``:
their J_2 = 3 sin t cos t + (pi - t)(1 + 2 cos^2 t)). The quadrant (+, -) is the same with
``y -> -y`` (``theta -> pi - theta``), (-, -) with ``(x, y) -> (-x, -y)``. This is exact (no
quadrature) and costs O(1) per pair. The kernel ``g = <sigma_a sigma_b>``, ``gp = <sigma'_a
sigma'_b>`` and their first and second derivatives in (K_aa, K_ab, K_bb) are differentiated by
hand (Price's theorem, ``dg/dK_ab = gp``, checked against autograd of the closed form in the tests).

Layout: pair-last. ``k`` is (3, P) = (K_aa, K_ab, K_bb); results are (..., P).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

#: Correlations of distinct samples are clamped to +-(1 - _RHO_EPS) in the kernel and its
#: K-derivatives (as in ``_expectations``: they diverge like 1/sin(theta) at |rho| = 1).
_RHO_EPS = 1e-7
#: 2 pi E[x^p y^q; x > 0, y > 0] = A(c) (pi - theta) + B(c) sin(theta): coefficients of A and B
#: in powers of c = cos(theta), lowest first (E[r^d] = 2^(d/2) Gamma(1 + d/2) included).
ORTHANT = {
    (0, 0): ((1,), ()),
    (2, 0): ((1,), (0, 1)), (1, 1): ((0, 1), (1,)), (0, 2): ((1,), (0, 1)),
    (4, 0): ((3,), (0, 5, 0, -2)), (3, 1): ((0, 3), (2, 0, 1)), (2, 2): ((1, 0, 2), (0, 3)),
    (1, 3): ((0, 3), (2, 0, 1)), (0, 4): ((3,), (0, 5, 0, -2)),
}


def products(a: float, b: float, k: torch.Tensor, combos) -> torch.Tensor:
    """``E[sigma_u^p sigma_v^q sigma'_u^r sigma'_v^t]`` for ``combos = ((p, q, r, t), ...)``: (len, P).

    ``p + q`` must be 0, 2 or 4 (the keys of ``ORTHANT``). One (len, 12) @ (12, P) product over
    the basis ``c^i (pi - theta)``, ``c^i theta``, ``c^i sin(theta)`` (i = 0..3), times the scale
    ``K_aa^(p/2) K_bb^(q/2) / (2 pi)`` of each row.
    """
    c = torch.clamp(k[1] * torch.rsqrt(k[0] * k[2]), -1.0, 1.0)
    theta = torch.arccos(c)
    sine = torch.sqrt((1 - c) * (1 + c))
    powers = [torch.ones_like(c), c, c * c]
    powers.append(powers[2] * c)
    basis = torch.stack([x * arc for arc in (math.pi - theta, theta, sine) for x in powers])
    su, sv = torch.sqrt(k[0]), torch.sqrt(k[2])
    pow_u, pow_v = [torch.ones_like(su), su, k[0]], [torch.ones_like(sv), sv, k[2]]
    pow_u += [k[0] * su, k[0] * k[0]]
    pow_v += [k[2] * sv, k[2] * k[2]]
    scales = {}
    for p, q, _, _ in combos:
        if (p, q) not in scales:
            scales[(p, q)] = pow_u[p] if q == 0 else pow_v[q] if p == 0 else pow_u[p] * pow_v[q]
    rows = torch.stack([scales[(p, q)] for p, q, _, _ in combos])
    return (_weights(a, b, tuple(combos), k.dtype, k.device) @ basis).mul_(rows)


@lru_cache(maxsize=64)
def _weights(a: float, b: float, combos: tuple, dtype, device) -> torch.Tensor:
    """Coefficients of ``products`` on its 12 basis functions (the quadrant sums of Cho & Saul's moments)."""
    out = torch.zeros(len(combos), 12, dtype=torch.float64)
    for row, (p, q, r, t) in enumerate(combos):
        nu, nv = p + r, q + t
        poly_a, poly_b = ORTHANT[(p, q)]
        # (+, +) and (-, -) (the latter (-1)^(p + q) times the former): A(c) (pi - theta) + B(c) sin
        same_side = b ** (nu + nv) + (-1) ** (p + q) * a ** (nu + nv)
        # (+, -) and (-, +): (-1)^q resp. (-1)^p times A(-c) theta + B(-c) sin
        opposite = (-1) ** q * b**nu * a**nv + (-1) ** p * a**nu * b**nv
        for i, coef in enumerate(poly_a):
            out[row, i] += same_side * coef
            out[row, 4 + i] += opposite * coef * (-1) ** i
        for i, coef in enumerate(poly_b):
            out[row, 8 + i] += same_side * coef + opposite * coef * (-1) ** i
    return (out / (2 * math.pi)).to(dtype=dtype, device=device)


def kernel_derivatives(a: float, b: float, k: torch.Tensor, same: torch.Tensor) -> dict:
    """``g, gp`` (3, P) and their first and second derivatives in the pair variables.

    Returns the fields of :class:`~ntkit.finite_width._pair_moments.PairMoments`: the diagonal
    slots depend on their own variance only (``jac_self`` (2, P): dg_aa/dK_aa, dg_bb/dK_bb; for
    the ReLU family ``ms``, and zero curvature), the ab slot on all three (``jac_ab`` (3, P),
    ``hess_ab`` (3, 3, P)). A pair of identical samples (``same``) has the single-sample function
    in its ab slot (all three variables move together), as
    :class:`~ntkit.finite_width._expectations.PairGaussian`. With
    ``Delta = sqrt(K_aa K_bb) sin(theta)``, ``kink = (a - b)^2 / (2 pi)``, ``ms = (a^2 + b^2) / 2``:
    ``g = kink Delta + gp K_ab``, ``gp = ms - kink theta``, ``dg/dK_aa = kink Delta / (2 K_aa)``,
    ``dg/dK_ab = gp`` (Price), ``dgp/dK_ab = kink / Delta``, ``dgp/dK_aa = -kink K_ab / (2 K_aa Delta)``.
    Where the correlation is clamped (|rho| > 1 - 1e-7) theta is held fixed, as autograd
    through the clamp.
    """
    kaa, kab, kbb = k
    ms, kink = (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi)
    norm = torch.sqrt(kaa * kbb)
    rho = kab / norm
    free = ((rho > -1 + _RHO_EPS) & (rho < 1 - _RHO_EPS) & ~same).to(k.dtype)
    theta = torch.arccos(torch.clamp(rho, -1 + _RHO_EPS, 1 - _RHO_EPS))
    delta = norm * torch.sin(theta)
    inv = free / torch.where(free > 0, delta, torch.ones_like(delta))  # 1 / Delta where theta moves
    other = (~same).to(k.dtype)
    gp1 = ms - kink * theta
    ms_row = torch.full_like(kaa, ms)
    zero = torch.zeros(2, k.shape[1], dtype=k.dtype, device=k.device)
    # Hessian of g: the norm part (theta fixed) plus, where theta moves, its K_ab-dependent part
    curve, kd = kink * kab * kab * inv, kink * delta
    h01, h12 = -kink * kab * inv / (2 * kaa), -kink * kab * inv / (2 * kbb)
    h00 = other * (curve - kd) / (4 * kaa * kaa)
    h02 = other * (curve + kd) / (4 * kaa * kbb)
    h22 = other * (curve - kd) / (4 * kbb * kbb)
    inv3 = inv * inv * inv
    p01, p12, p02 = -kink * kbb * inv3 / 2, -kink * kaa * inv3 / 2, kink * kab * inv3 / 4
    p00 = kink * kab * (inv / (2 * kaa * kaa) + kbb * inv3 / (4 * kaa))
    p22 = kink * kab * (inv / (2 * kbb * kbb) + kaa * inv3 / (4 * kbb))
    return {
        "g": torch.stack([ms * kaa, torch.where(same, ms * kaa, kd + gp1 * kab), ms * kbb]),
        "gp": torch.stack([ms_row, torch.where(same, ms_row, gp1), ms_row]),
        "jac_self": torch.full_like(zero, ms),
        "jac_ab": torch.stack([torch.where(same, ms_row, kd / (2 * kaa)), other * gp1, other * kd / (2 * kbb)]),
        "hess_self": zero,
        "hess_ab": torch.stack([h00, h01, h02, h01, kink * inv, h12, h02, h12, h22]).reshape(3, 3, -1),
        "jacp_self": zero,
        "jacp_ab": torch.stack([-kink * kab * inv / (2 * kaa), kink * inv, -kink * kab * inv / (2 * kbb)]),
        "hessp_self": zero,
        "hessp_ab": torch.stack([p00, p01, p02, p01, kink * kab * inv3, p12, p02, p12, p22]).reshape(3, 3, -1),
    }
