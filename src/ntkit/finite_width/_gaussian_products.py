"""Gaussian expectations of products of activation derivatives at up to four samples.

The dNTK tensors P, Q and the NTK tensors B, F they need (RYH ch. 8 and ch. 11; the note
§2.5) are indexed by four samples, so their integrands

.. math:: \\Big\\langle \\prod_r \\sigma^{(o_r)}(z_{s_r}) \\Big\\rangle_K, \\qquad z \\sim \\mathcal N(0, K),

touch at most four distinct samples. :class:`ProductGaussian` evaluates any such product for
the N inputs of one layer, caching by (distinct samples, derivative orders per sample).

* **Smooth activations** (tanh, erf, GELU, ...): a product trapezoidal rule in whitened
  coordinates from a pivoted Cholesky factor, :math:`z_{s_0} = l_{00} x_0`,
  :math:`z_{s_1} = l_{10} x_0 + l_{11} x_1`, ..., on [-8.5, 8.5] per axis, summed innermost axis
  first (a factor joins once the axes it depends on remain); :math:`\\sigma', \\sigma'',
  \\sigma'''` by autograd. The rule converges geometrically for integrands analytic in a strip
  (tanh: poles at :math:`\\pm i\\pi/2`). Each axis gets the step that keeps the step in z at
  most 0.1 (one or two samples), 0.2 (three) or 0.4 (four), so nodes grow with the
  pre-activation std. Measured for tanh products of orders <= 3 (values 0.01-0.16) at mean
  variances 1, 2, 4 against steps 0.12 / 0.25: four samples <= 4e-7 absolute, three <= 2e-15.
  Cost of a four-sample product at unit variances: ~2e6 nodes (~15 MB per derivative array).
  A rank-r covariance (e.g. the first layer of inputs with fewer features than samples) gets an
  r-dimensional grid.
* **ReLU family** (:class:`~ntkit.layers.rectified.ABReLU`): exact, polar coordinates with
  Gauss-Legendre between the kinks (``_expectations._PolarGrid``), for products touching at
  most two distinct samples. Three or four distinct samples would need orthant integrals of the
  multivariate normal (no elementary closed form); they are not implemented.
  :math:`\\sigma''` is the distribution :math:`(b - a)\\,\\delta(z)`; only
  :math:`\\langle\\sigma''_a\\sigma_b\\rangle` is needed (by Stein's lemma) and is given in
  closed form.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from .._errors import NtkitError
from ..layers.rectified import ABReLU
from ._expectations import _PolarGrid, _smooth_fn

#: Trapezoid rule per whitened axis: the largest step in z (by the grid's dimension), the
#: half width (the N(0, 1) weight there is 3e-16) and the fewest nodes.
_Z_STEP = {1: 0.1, 2: 0.1, 3: 0.2, 4: 0.4}
_HALF_WIDTH = 8.5
_MIN_NODES = 21
#: Grids (with their derivative values) kept at once per number of samples, least recently used
#: dropped first: a 4-sample grid holds ~15 MB per derivative, a 3-sample one ~1 MB.
_GRIDS_KEPT = {1: 1 << 30, 2: 1 << 30, 3: 16, 4: 2}


class ProductGaussian:
    """``expect(((sample, order), ...))`` = E[prod sigma^(order)(z_sample)] for z ~ N(0, k).

    ``k`` is the (N, N) float64 covariance of one layer's pre-activations at the N inputs.
    """

    def __init__(self, act, k: torch.Tensor, where: str = "activation"):
        self.act, self.k, self.where = act, k, where
        self.relu = isinstance(act, ABReLU)
        self._fn = None if self.relu else _smooth_fn(act)
        self._values: dict = {}
        self._grids = {size: OrderedDict() for size in _GRIDS_KEPT}

    def expect(self, factors) -> float:
        per_sample: dict = {}
        for sample, order in factors:
            per_sample.setdefault(int(sample), []).append(int(order))
        samples = tuple(sorted(per_sample))
        key = (samples, tuple(tuple(sorted(per_sample[s])) for s in samples))
        if key not in self._values:
            self._values[key] = self._relu(*key) if self.relu else self._smooth(*key)
        return self._values[key]

    # -- ReLU family: exact ------------------------------------------------------------------

    def _relu(self, samples, orders) -> float:
        if any(o >= 2 for group in orders for o in group):
            return self._relu_curvature(samples, orders)
        if len(samples) > 2:
            raise NtkitError(
                f"{self.where} ({type(self.act).__name__}): the dNTK statistics of the ReLU family need "
                f"Gaussian orthant integrals over {len(samples)} distinct inputs, which are not implemented; "
                "pass at most 2 distinct inputs, or use a smooth activation (Tanh, Erf, GELU)"
            )
        a, b = samples[0], samples[-1]
        k = torch.stack([self.k[a, a], self.k[a, b], self.k[b, b]])[None]
        grid = _PolarGrid(self.act, k)
        factors = [(0, o) for o in orders[0]] + ([(1, o) for o in orders[1]] if len(samples) == 2 else [])
        return float(grid.expect(factors)[0])

    def _relu_curvature(self, samples, orders) -> float:
        """<sigma''_a sigma_b> = (b - a) p_a(0) E[sigma(z_b) | z_a = 0], with sigma = a z^- + b z^+ slopes."""
        flat = sorted((o, s) for s, group in zip(samples, orders) for o in group)
        if [o for o, _ in flat] != [0, 2]:
            raise NtkitError(
                f"internal: {self.where} ({type(self.act).__name__}): only <sigma'' sigma> of the ReLU family "
                f"is implemented, got derivative orders {[o for o, _ in flat]}"
            )
        (_, b), (_, a) = flat  # sigma at sample b, sigma'' at sample a
        if a == b:
            return 0.0  # sigma(0) = 0
        kaa, kab, kbb = float(self.k[a, a]), float(self.k[a, b]), float(self.k[b, b])
        conditional = max(kbb - kab * kab / kaa, 0.0)
        jump = self.act.b - self.act.a
        return jump * jump * math.sqrt(conditional) / (2 * math.pi * math.sqrt(kaa))

    # -- smooth activations: trapezoidal rule in whitened coordinates -------------------------

    def _smooth(self, samples, orders) -> float:
        """Nested sums, innermost axis first: a factor joins once the axes it depends on remain."""
        grid = self._grid(samples)
        z, weights, rank, depths = grid["z"], grid["weights"], grid["rank"], grid["depths"]
        by_depth: dict = {}
        for position, group in enumerate(orders):
            for order in group:
                if (position, order) not in grid["derivatives"]:
                    grid["derivatives"][position, order] = _derivatives(
                        self._fn, z[position], order, f"{self.where} ({type(self.act).__name__})"
                    )
                values = grid["derivatives"][position, order]
                by_depth.setdefault(depths[position], []).append(values.reshape(values.shape[: depths[position]]))
        total = None  # the last pivot depends on every axis, so the innermost axis has a factor
        for axis in range(rank - 1, -1, -1):
            for values in by_depth.get(axis + 1, []):
                total = values if total is None else total * values
            total = total @ weights[axis]  # sums this axis
        return float(total)

    def _grid(self, samples):
        """z at the nodes for each sample: z_S = L x with L from a pivoted Cholesky of K_S.

        A rank-r covariance (e.g. first-layer kernels of inputs with few features) gets an
        r-dimensional grid; the j-th pivot depends on the first j + 1 axes only.
        """
        grids = self._grids[len(samples)]
        if samples in grids:
            grids.move_to_end(samples)
        else:
            sub = self.k[list(samples)][:, list(samples)]
            pivots, factor = _pivoted_cholesky(sub)
            rank = len(pivots)
            rules = [_rule(rank, float(factor[:, t].abs().max()), sub.dtype) for t in range(rank)]
            z, depths = [], []
            for row in range(len(samples)):
                depth = pivots.index(row) + 1 if row in pivots else rank
                depths.append(depth)
                value = torch.zeros((1,) * rank, dtype=sub.dtype)  # axes >= depth stay singleton
                for t in range(depth):
                    shape = [1] * rank
                    shape[t] = -1
                    value = value + factor[row, t] * rules[t][0].reshape(shape)
                z.append(value)
            grids[samples] = {
                "z": z, "weights": [w for _, w in rules], "rank": rank, "depths": depths, "derivatives": {}
            }
            if len(grids) > _GRIDS_KEPT[len(samples)]:
                grids.popitem(last=False)
        return grids[samples]


def _pivoted_cholesky(sub: torch.Tensor):
    """Pivots and L (s, r) with L L^T = sub, r the numerical rank (relative tolerance 1e-10)."""
    residual = sub.clone()
    size = sub.shape[0]
    factor = sub.new_zeros(size, size)
    pivots = []
    scale = float(sub.diagonal().max())
    for column in range(size):
        diagonal = residual.diagonal().clone()
        for used in pivots:
            diagonal[used] = -1.0
        pivot = int(diagonal.argmax())
        if float(diagonal[pivot]) <= 1e-10 * scale:
            break
        factor[:, column] = residual[:, pivot] / diagonal[pivot].sqrt()
        residual = residual - torch.outer(factor[:, column], factor[:, column])
        pivots.append(pivot)
    return pivots, factor[:, : len(pivots)]


def _rule(dims: int, scale: float, dtype):
    """Trapezoid nodes and weights (against N(0, 1)) for one whitened axis.

    ``scale`` is the largest coefficient of this axis in any sample's z, so the step in z is at
    most ``_Z_STEP[dims]``; at least ``_MIN_NODES`` nodes on [-``_HALF_WIDTH``, ``_HALF_WIDTH``].
    """
    count = max(_MIN_NODES, int(math.ceil(2 * _HALF_WIDTH * scale / _Z_STEP[dims])) + 1) | 1
    nodes = torch.linspace(-_HALF_WIDTH, _HALF_WIDTH, count, dtype=dtype)
    step = float(nodes[1] - nodes[0])
    return nodes, step * torch.exp(-nodes**2 / 2) / math.sqrt(2 * math.pi)


def _derivatives(fn, z: torch.Tensor, order: int, where: str) -> torch.Tensor:
    """The order-th derivative of the elementwise fn at z, by autograd (order <= 3).

    A derivative that autograd cannot differentiate further (``once_differentiable``, no double
    backward) is accepted only where it is constant (e.g. a linear fn); a derivative that vanishes
    at every node while the one below it does not is a kink (``Elementwise(torch.abs)``), whose
    distributional second derivative quadrature cannot see: both raise.
    """
    if order == 0:
        return fn(z).detach()
    x = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        for step in range(order):
            below = y.detach()
            try:
                grad = None
                if y.requires_grad:
                    (grad,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
            except RuntimeError as error:
                raise NtkitError(_lacking(where, step + 1, str(error))) from None
            if grad is None:
                if step >= 1 and not _constant(below):
                    raise NtkitError(_lacking(where, step + 1, "autograd returned no derivative"))
                return torch.zeros_like(z)
            if step >= 1 and _constant(grad.detach(), zero=True) and not _constant(below):
                raise NtkitError(
                    f"{where}: sigma^({step + 1}) vanishes at every quadrature node while sigma^({step}) "
                    "does not: a kink, whose distributional derivative the dNTK needs; use nk.ReLU, "
                    "nk.LeakyReLU, nk.Abs or nk.ABReLU (closed forms) for piecewise-linear activations"
                )
            y = grad
    return y.detach()


def _lacking(where: str, order: int, detail: str) -> str:
    return (
        f"{where}: the dNTK needs the activation's derivatives up to order 3, and autograd cannot give "
        f"derivative {order} ({detail}); write the activation with torch functions that autograd can "
        "differentiate three times"
    )


def _constant(values: torch.Tensor, zero: bool = False) -> bool:
    scale = float(values.abs().max()) if values.numel() else 0.0
    if zero:
        return scale == 0.0
    return float(values.max() - values.min()) <= 1e-12 * (1.0 + scale)
