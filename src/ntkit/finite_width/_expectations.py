"""Gaussian expectations of one activation over a pair of samples, and their K-derivatives.

Everything the O(1/n) mean recursions need for a pair (a, b) is a 2-D Gaussian integral
(the note's sample-set closure). It is a function of the three *pair variables*
``K = (K_aa, K_ab, K_bb)`` (slots 0, 1, 2; the slot of samples (i, j) is ``i + j``).

* ``g_w = <sigma_i sigma_j>``, ``gp_w = <sigma'_i sigma'_j>`` for each slot w = (i, j), their
  Jacobians ``J[w, u] = dg_w/dK_u`` and Hessians ``H[w, u, v]``. The diagonal slots depend
  on their own variance only (total derivatives). Closed-form activations (ReLU family, erf)
  differentiate their closed forms by hand (``_relu_pairs``, ``_erf_pairs``; ``_closed_form``
  does the same by autograd and is kept as a check); smooth ones differentiate their quadrature
  rule (nodes u = sqrt(K_aa) x_i, ...) by autograd, which needs sigma up to sigma''' only.
  (The same derivatives by Price's theorem, ``d/dK_ab <f(u) h(v)> = <f' h'>``,
  ``d/dK_aa <f(u) h(v)> = <f'' h> / 2``, need sigma^(5) and lose accuracy at large variance.)
* ``expect(factors)``: any product of ``sigma^(k)`` at the two samples. For the ReLU family
  (positively homogeneous, degree 1) it is exact up to round-off: the arc-cosine closed forms
  of ``_relu_pairs`` for up to four factors sigma, else polar coordinates, ``E[r^d]`` times
  Gauss-Legendre on each arc between kinks (16 nodes: the integrand is a trigonometric
  polynomial of degree <= 4 there; :class:`_PolarGrid`). Erf: tilting and a 1-D correlation
  integral (``_erf_pairs``, error < 1e-13), up to four factors. For smooth activations: the trapezoidal rule
  of :class:`~ntkit.Elementwise` in whitened coordinates (relative error < 1e-12 for tanh at
  variances <= 9 with 151 nodes, see its docstring; the same rule integrates the derivatives,
  which are analytic in the same strip), with more nodes as the variance grows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._errors import NtkitError
from ..layers.elementwise import DEFAULT_ORDER, Elementwise, _gaussian_rule
from ..layers.erf import GELU, Erf
from ..layers.rectified import ABReLU
from . import _erf_pairs, _relu_pairs

#: Correlations of distinct samples are clamped to +-(1 - _RHO_EPS) in the arc-cosine closed
#: forms, whose derivatives diverge like 1/sin(theta) at |rho| = 1 (note, pitfall 14).
_RHO_EPS = 1e-7
_LEGENDRE = np.polynomial.legendre.leggauss(16)
#: Trapezoid nodes per unit of the largest pre-activation std (at least the activation's order):
#: measured, K^1 and Theta^1 of a 4-layer tanh MLP agree with a 601-node rule to < 1e-12
#: (relative) at first-layer variances 1 to 23; a fixed 151 nodes was off by 1e-3 at 23.
_NODES_PER_STD = 90


class PairGaussian:
    """The statistics of ``sigma(z)`` for ``z ~ N(0, [[K_aa, K_ab], [K_ab, K_bb]])``, per pair.

    ``k`` is (P, 3) float64; ``same`` (P,) marks pairs of identical samples, whose ``ab`` slot
    is then the single-sample function (all three variables move together). With
    ``hessians=False`` the second K-derivatives are skipped (``hess``, ``hessp`` are zero): the
    four-point engine needs only first derivatives, and the Hessians' double backward through
    the quadrature is most of the cost for smooth activations.
    """

    def __init__(self, act, k: torch.Tensor, same: torch.Tensor, hessians: bool = True):
        self.act, self.k, self.same = act, k, same
        self._grid = None
        if isinstance(act, (ABReLU, Erf)):  # closed forms, differentiated by hand (_relu_pairs, _erf_pairs)
            pairs = k.T.contiguous()
            if isinstance(act, ABReLU):
                stats = _relu_pairs.kernel_derivatives(act.a, act.b, pairs, same)
            else:
                stats = _erf_pairs.kernel_derivatives(act, pairs, same)
            self.g, self.jac, self.hess, self.gp, self.jacp, self.hessp = _dense(stats, hessians)
            return
        self._grid = self._make_grid()
        self.g, self.jac, self.hess, self.gp, self.jacp, self.hessp = _closed_form(
            self.act, k, same, (self._grid.nodes, self._grid.weights), hessians
        )

    def _make_grid(self):
        if isinstance(self.act, ABReLU):
            return _PolarGrid(self.act, self.k)
        order = self.act.order if isinstance(self.act, Elementwise) else DEFAULT_ORDER
        # the trapezoid step must resolve sigma(s x) on the scale 1/s: nodes grow with the std s
        largest = float(torch.sqrt(self.k[:, [0, 2]].max())) if self.k.numel() else 1.0
        return _TensorGrid(_smooth_fn(self.act), self.k, max(order, int(_NODES_PER_STD * largest) | 1))

    def expect(self, factors) -> torch.Tensor:
        """``E[prod sigma^(order)(z_sample)]`` for ``factors = ((sample, order), ...)``: (P,).

        The ReLU family (an even number of factors sigma, at most four) and Erf (at most four
        factors) in closed form (``_relu_pairs``, ``_erf_pairs``); anything else on the grid.
        """
        counts = [0, 0, 0, 0]  # p, q (sigma at a, b), r, t (sigma' at a, b)
        for sample, order in factors:
            if order > 1:
                counts = None
                break
            counts[2 * order + sample] += 1
        if counts is not None and isinstance(self.act, ABReLU) and counts[0] + counts[1] in (0, 2, 4):
            return _relu_pairs.products(self.act.a, self.act.b, self.k.T.contiguous(), [tuple(counts)])[0]
        if counts is not None and isinstance(self.act, Erf) and sum(counts) <= 4:
            return _erf_pairs.products(self.act, self.k.T.contiguous(), [tuple(counts)])[0]
        if self._grid is None:
            self._grid = self._make_grid()
        return self._grid.expect(factors)

    def stein(self) -> torch.Tensor:
        """``E1[i, j, beta] = <d/dz_beta (sigma_i sigma'_j)>``, (P, 2, 2, 2) (Stein's lemma weights)."""
        p = self.k.shape[0]
        e1 = self.k.new_zeros(p, 2, 2, 2)
        for i in range(2):
            e1[:, i, i, i] = self.jac[:, 2 * i, 2 * i]  # <sigma'^2 + sigma sigma''> = dg/dK
            j = 1 - i
            e1[:, i, j, i] = self.gp[:, 1]  # <sigma'_i sigma'_j>
            # <sigma_i sigma''_j> = 2 dg_ab/dK_jj; for identical samples <sigma sigma''> = dg - <sigma'^2>
            e1[:, i, j, j] = torch.where(self.same, self.jac[:, 0, 0] - self.gp[:, 1], 2 * self.jac[:, 1, 2 * j])
        return e1


def _dense(stats: dict, hessians: bool):
    """The pair-first (P, 3), (P, 3, 3), (P, 3, 3, 3) g, J, H, gp, Jp, Hp from the compact pair-last fields."""
    out = []
    for name in ("", "p"):
        g = stats[f"g{name}"]
        p = g.shape[1]
        jac, hess = g.new_zeros(p, 3, 3), g.new_zeros(p, 3, 3, 3)
        jac[:, 0, 0], jac[:, 2, 2] = stats[f"jac{name}_self"]
        jac[:, 1] = stats[f"jac{name}_ab"].T
        if hessians:
            hess[:, 0, 0, 0], hess[:, 2, 2, 2] = stats[f"hess{name}_self"]
            hess[:, 1] = stats[f"hess{name}_ab"].permute(2, 0, 1)
        out += [g.T.contiguous(), jac, hess]
    return out


def _smooth_fn(act):
    if isinstance(act, GELU):  # torch's gelu has no autograd beyond second order; x Phi(x) has
        return lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return act.fn


def _closed_form(act, k: torch.Tensor, same: torch.Tensor, rule=None, hessians: bool = True):
    """g, J, H and gp, Jp, Hp by autograd of the closed forms, or of the quadrature ``rule``."""
    p = k.shape[0]
    out = []
    safe_ab = torch.where(same, torch.zeros_like(k[:, 1]), k[:, 1])
    for index in range(2):  # 0: <sigma sigma>, 1: <sigma' sigma'>
        value, jac, hess = k.new_zeros(p, 3), k.new_zeros(p, 3, 3), k.new_zeros(p, 3, 3, 3)
        for w in (0, 2):
            v, d1, d2 = _derivatives(lambda x: _single(act, x, rule)[index], [k[:, w]], hessians)
            value[:, w], jac[:, w, w], hess[:, w, w, w] = v, d1[0], d2[0][0]
        v, d1, d2 = _derivatives(
            lambda a, c, b: _pair(act, a, c, b, rule)[index], [k[:, 0], safe_ab, k[:, 2]], hessians
        )
        value[:, 1] = torch.where(same, value[:, 0], v)
        for u in range(3):
            jac[:, 1, u] = torch.where(same, jac[:, 0, 0] if u == 0 else 0.0 * v, d1[u])
            for t in range(3):
                hess[:, 1, u, t] = torch.where(same, hess[:, 0, 0, 0] if u == t == 0 else 0.0 * v, d2[u][t])
        out += [value, jac, hess]
    return out


def _derivatives(fn, variables, hessians: bool = True):
    """Value, gradient and Hessian (zero unless ``hessians``) of an elementwise function of (P,) tensors."""
    xs = [v.detach().clone().requires_grad_(True) for v in variables]
    zero = torch.zeros_like(xs[0])
    with torch.enable_grad():
        y = fn(*xs)
        if not y.requires_grad:
            return y.detach(), [zero] * len(xs), [[zero] * len(xs) for _ in xs]
        grads = torch.autograd.grad(y.sum(), xs, create_graph=hessians, allow_unused=True)
        hess = [] if hessians else [[zero] * len(xs) for _ in xs]
        for g in grads if hessians else ():
            if g is None or not g.requires_grad:
                hess.append([zero] * len(xs))
                continue
            row = torch.autograd.grad(g.sum(), xs, retain_graph=True, allow_unused=True)
            hess.append([zero if r is None else r.detach() for r in row])
    return y.detach(), [zero if g is None else g.detach() for g in grads], hess


def _single(act, k, rule=None):
    """(<sigma(z)^2>, <sigma'(z)^2>) for z ~ N(0, k)."""
    if rule is not None:
        nodes, weights = rule
        f, slope = _value_and_slope(_smooth_fn(act), torch.sqrt(k)[:, None] * nodes)
        return (f * f) @ weights, (slope * slope) @ weights
    if isinstance(act, ABReLU):
        mean_square = (act.a**2 + act.b**2) / 2
        return k * mean_square, k * 0.0 + mean_square
    beta = 2 * act.b**2  # Erf: a erf(b z) + c (Williams 1997, eq. 11)
    g = torch.arcsin(beta * k / (1 + beta * k)) * (2 * act.a**2 / math.pi) + act.c**2
    return g, (2 * act.a**2 * beta / math.pi) / torch.sqrt(1 + 2 * beta * k)


def _pair(act, kaa, kab, kbb, rule=None):
    """(<sigma_a sigma_b>, <sigma'_a sigma'_b>) for distinct samples."""
    if rule is not None:  # the product rule in whitened coordinates, differentiable in K
        nodes, weights = rule
        l11 = torch.sqrt(kaa)
        l21 = kab / l11
        l22 = torch.sqrt(torch.clamp(kbb - l21 * l21, min=_RHO_EPS**2 * kbb))
        fu, su = _value_and_slope(_smooth_fn(act), l11[:, None] * nodes)
        fv, sv = _value_and_slope(_smooth_fn(act), l21[:, None, None] * nodes[:, None] + l22[:, None, None] * nodes)
        return (fu * (fv @ weights)) @ weights, (su * (sv @ weights)) @ weights
    if isinstance(act, ABReLU):  # arc-cosine kernel of degree 1 (Cho & Saul 2009, eq. 6)
        norm = torch.sqrt(kaa * kbb)
        rho = torch.clamp(kab / norm, -1 + _RHO_EPS, 1 - _RHO_EPS)
        theta = torch.arccos(rho)
        kink = (act.a - act.b) ** 2 / (2 * math.pi)
        gp = (act.a**2 + act.b**2) / 2 - kink * theta
        return kink * norm * torch.sin(theta) + gp * kab, gp
    beta = 2 * act.b**2
    spread = (1 + beta * kaa) * (1 + beta * kbb)
    g = torch.arcsin(beta * kab / torch.sqrt(spread)) * (2 * act.a**2 / math.pi) + act.c**2
    return g, (2 * act.a**2 * beta / math.pi) / torch.sqrt(spread - (beta * kab) ** 2)


def _value_and_slope(fn, z):
    """fn(z) and fn'(z), both differentiable further (fn is elementwise)."""
    if not z.requires_grad:
        z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(z)
        (slope,) = torch.autograd.grad(y.sum(), z, create_graph=True)
    return y, slope


def _whiten(k: torch.Tensor):
    """Cholesky factor of each 2x2 pair covariance: (l11, l21, l22)."""
    l11 = torch.sqrt(k[:, 0])
    l21 = torch.where(l11 > 0, k[:, 1] / torch.where(l11 > 0, l11, torch.ones_like(l11)), torch.zeros_like(l11))
    l22 = torch.sqrt(torch.clamp(k[:, 2] - l21 * l21, min=0.0))
    return l11, l21, l22


class _TensorGrid:
    """Product trapezoidal rule in whitened coordinates: u = l11 x_i, v = l21 x_i + l22 x_j."""

    def __init__(self, fn, k, order):
        rule = _gaussian_rule("trapezoid", order)
        nodes, weights = (torch.as_tensor(t, dtype=k.dtype, device=k.device) for t in rule)
        self.nodes, self.weights = nodes, weights
        l11, l21, l22 = _whiten(k)
        u = l11[:, None] * nodes
        v = l21[:, None, None] * nodes[:, None] + l22[:, None, None] * nodes[None, :]
        self.u = [t.detach() for t in _value_and_slope(fn, u)]  # [sigma, sigma'] at the nodes
        self.v = [t.detach() for t in _value_and_slope(fn, v)]
        self._inner = {}

    def expect(self, factors):
        a, second = None, []
        for sample, order in factors:
            if order >= len(self.u):
                raise NtkitError(f"internal: derivative order {order} of the activation not prepared")
            if sample == 0:
                a = self.u[order] if a is None else a * self.u[order]
            else:
                second.append(order)
        key = tuple(sorted(second))
        if key not in self._inner:  # the sum over the second node, shared by many expectations
            b = None
            for order in key:
                b = self.v[order] if b is None else b * self.v[order]
            self._inner[key] = (b @ self.weights) if b is not None else self.weights.sum()
        return ((a if a is not None else 1.0) * self._inner[key]) @ self.weights


class _PolarGrid:
    """Exact expectations of products of a positively homogeneous (ABReLU) sigma and sigma'.

    z = L (r cos phi, r sin phi): a product with d factors sigma (and any sigma') is
    r^d f(phi), so E = E[r^d] / (2 pi) * integral of f, with E[r^d] = 2^(d/2) Gamma(1 + d/2);
    f is a trigonometric polynomial between the kinks u = 0, v = 0.
    """

    def __init__(self, act, k):
        self.a, self.b = act.a, act.b
        l11, l21, l22 = _whiten(k)
        psi = torch.atan2(l22, l21)
        two_pi = 2 * math.pi
        cuts = torch.stack(
            [torch.full_like(psi, math.pi / 2), torch.full_like(psi, 1.5 * math.pi),
             torch.remainder(psi + math.pi / 2, two_pi), torch.remainder(psi - math.pi / 2, two_pi)], dim=1
        )
        edges = torch.cat(
            [torch.zeros_like(psi)[:, None], cuts.sort(dim=1).values, torch.full_like(psi, two_pi)[:, None]], 1
        )
        nodes, weights = (torch.as_tensor(t, dtype=k.dtype, device=k.device) for t in _LEGENDRE)
        lo, half = edges[:, :-1, None], (edges[:, 1:, None] - edges[:, :-1, None]) / 2
        phi = (lo + half * (nodes + 1)).reshape(k.shape[0], -1)
        self.w = (half * weights).reshape(k.shape[0], -1) / two_pi
        u = l11[:, None] * torch.cos(phi)
        v = l21[:, None] * torch.cos(phi) + l22[:, None] * torch.sin(phi)
        # sigma and sigma' at the nodes, once: every expectation is a product of these four
        self._factors = {
            (sample, order): self._factor(x, order) for sample, x in enumerate((u, v)) for order in (0, 1)
        }

    def _factor(self, x, order):
        if order == 0:
            return torch.where(x < 0, self.a * x, self.b * x)
        return torch.where(x < 0, torch.full_like(x, self.a), torch.full_like(x, self.b))

    def expect(self, factors):
        product, degree = self.w, 0
        for sample, order in factors:
            if order > 1:
                raise NtkitError("internal: the ReLU family has no pointwise higher derivatives; use the closed forms")
            product = product * self._factors[(sample, order)]
            degree += order == 0
        radial = 2 ** (degree / 2) * math.gamma(1 + degree / 2)
        return product.sum(1) * radial
