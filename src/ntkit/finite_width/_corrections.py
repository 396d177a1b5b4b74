"""The 1/n corrections to the mean NNGP kernel and NTK for all pairs of inputs."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._errors import NtkitError
from ._architecture import check_points, check_width, hidden_width, read_mlp
from ..layers.erf import Erf
from ..layers.rectified import ABReLU
from ._recursions import cross_statistics

#: Pairs per batch: a quadrature grid (activations without closed forms) holds ~12 (P, m, m)
#: float64 arrays, ~70 MB for 32 pairs at m = 151 nodes (m grows with the pre-activation std);
#: the ReLU family and Erf hold O(P * 300) numbers (Erf's correlation integral is blocked to
#: 8 MB arrays), ~40 MB at 1 << 14 pairs.
_SMOOTH_PAIRS = 32
_CLOSED_PAIRS = 1 << 14


class FiniteWidthCorrections(NamedTuple):
    """Infinite-width kernels and their 1/n mean corrections, each (N1, N2) float64.

    ``E[K_hat] = nngp + nngp_correction / n + O(1/n^2)`` and
    ``E[Theta_hat] = ntk + ntk_correction / n + O(1/n^2)``.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor
    nngp_correction: torch.Tensor
    ntk_correction: torch.Tensor


class CorrectedKernel(NamedTuple):
    """The mean kernels of width-n networks to O(1/n): ``K + K^1/n`` and ``Theta + Theta^1/n``."""

    nngp: torch.Tensor
    ntk: torch.Tensor


def corrections(
    net, x1: torch.Tensor, x2: torch.Tensor | None = None, *, width: int | None = None
) -> FiniteWidthCorrections:
    """K, Theta and their 1/n mean corrections K^1, Theta^1 for every pair of inputs.

    For hidden width n (all hidden layers equal), the empirical output kernel
    :math:`\\hat K_{ab} = \\frac{1}{n_L}\\sum_i z_{i;a} z_{i;b}` and the empirical NTK (either
    traced over outputs) satisfy (RYH §4.5 for the kernel, §8.3 for the NTK)

    .. math::
        \\mathbb E[\\hat K_{ab}] = K_{ab} + \\frac{K^{1}_{ab}}{n} + O(n^{-2}), \\qquad
        \\mathbb E[\\hat\\Theta_{ab}] = \\Theta_{ab} + \\frac{\\Theta^{1}_{ab}}{n} + O(n^{-2}).

    Recursions (re-derived in pair variables :math:`u, v \\in \\{aa, ab, bb\\}`, no
    :math:`K^{-1}`; RYH §4.3 (V), §4.5 (K^1), §8.3 (D, F, Theta^1); the note §2.1-2.2; equation
    numbers are not quoted: the book's index order differs and was not checked line by line), with
    :math:`g_{ab} = \\langle\\sigma_a\\sigma_b\\rangle_K`, :math:`g'_{ab} = \\langle\\sigma'_a\\sigma'_b\\rangle_K`:

    .. math::
        K^{1\\prime}_{ab} &= C_W\\Big[\\sum_u \\partial_u g_{ab} K^1_u
            + \\tfrac12 \\sum_{uv} \\partial_u\\partial_v g_{ab} V_{uv}\\Big], \\\\
        \\Theta^{1\\prime}_{ab} &= \\lambda_W\\Big[\\ldots\\text{same with } g\\ldots\\Big]
            + C_W\\Big[\\big(\\textstyle\\sum_u \\partial_u g'_{ab} K^1_u
            + \\tfrac12\\sum_{uv}\\partial_u\\partial_v g'_{ab} V_{uv}\\big)\\Theta_{ab}
            + g'_{ab}\\Theta^1_{ab} + \\sum_u \\partial_u g'_{ab} D_{u(ab)} + (F\\text{ term})\\Big],

    with V, D, F propagated alongside (see ``_recursions``). Layer 1 is Gaussian, so both
    corrections vanish for L <= 2 and first appear at L = 3.

    Cost: O(L N1 N2) pair problems (the note's sample-set closure), batched over pairs (a few
    hundred whole-batch tensor operations per layer and batch of 2^14 pairs). The Gaussian
    integrals: for the ReLU family the arc-cosine closed forms (Cho & Saul 2009) of every product
    of up to four factors sigma, sigma' (exact to round-off; correlations of distinct inputs are
    clamped to +-(1 - 1e-7) in the kernel's K-derivatives); for Erf Williams' closed forms, Gaussian
    tilting and a 1-D Gauss-Legendre integral over the correlation for the four-factor products
    (error below 1e-13, see ``_erf_pairs``). For the ReLU family on the CPU a compiled loop
    (Numba, ``_compiled_pairs``) carries each pair through all layers at once; it agrees with the
    torch form to round-off. Measured with one thread, a depth-5 MLP and N = 1000 inputs: about
    0.1 us per pair and layer for the ReLU family (0.35 s in all; the torch form, without Numba
    or with ``NTKIT_DISABLE_NUMBA=1``: 1 us, 2 s) and 2 us for Erf (5-6 s).
    Other activations use a trapezoidal rule in whitened coordinates, differentiated in K by
    autograd, with max(151, 90 s) nodes per dimension for a largest pre-activation std s (tanh:
    K^1 and Theta^1 agree with 601 nodes to 1e-12 relative at variances 1 to 23;
    Elementwise(erf) agrees with the closed-form Erf to 1e-14), in
    batches of 32 pairs: orders of magnitude slower.

    Parameters
    ----------
    net : Serial or MLPSpec
        ``serial(Dense, act, ..., Dense)`` (see :func:`read_mlp` for the parameterization
        presets) or an explicit :class:`MLPSpec`.
    x1, x2 : Tensor (N1, d), (N2, d)
        Inputs; ``x2=None`` means ``x1``.
    width : int, optional
        The hidden width n. It only matters for the standard parameterization, whose
        learning rates are :math:`\\lambda_W = n`; default: the network's own hidden width.

    Returns
    -------
    FiniteWidthCorrections
        ``nngp, ntk, nngp_correction, ntk_correction``, each (N1, N2) float64.

    References
    ----------
    D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*, CUP 2022,
    ch. 4 (§4.3, §4.5) and ch. 8 (§8.3). S. Yaida, arXiv:1910.00019.
    """
    x1 = check_points(x1, "x1")
    x2 = x1 if x2 is None else check_points(x2, "x2")
    same_inputs = x2 is x1
    if x2.shape[1] != x1.shape[1]:
        raise NtkitError(f"x1 has {x1.shape[1]} features but x2 has {x2.shape[1]}")
    if width is not None:
        check_width(width)
    spec = read_mlp(net, width, x1.shape[1])
    n1, n2 = x1.shape[0], x2.shape[0]
    if same_inputs:
        rows, cols = torch.triu_indices(n1, n1)
    else:
        rows, cols = (t.reshape(-1) for t in torch.meshgrid(torch.arange(n1), torch.arange(n2), indexing="ij"))
    features = x1.shape[1]
    gram = (x1 @ x2.T / features).contiguous()
    norms1 = (x1 * x1).sum(1) / features
    norms2 = norms1 if same_inputs else (x2 * x2).sum(1) / features
    # identical samples (also duplicated rows): the pair problem degenerates to one sample
    ids = torch.unique(torch.cat([x1, x2]) if not same_inputs else x1, dim=0, return_inverse=True)[1]
    same = ids[rows] == ids[cols + (0 if same_inputs else n1)]
    _check_variances(spec, norms1 if same_inputs else torch.cat([norms1, norms2]))  # every input is in a pair
    flat = rows * n2 + cols
    first = norms1[rows]
    q = torch.stack([first, torch.where(same, first, gram.view(-1)[flat]), norms2[cols]], 1)
    chunk = _CLOSED_PAIRS if all(isinstance(a, (ABReLU, Erf)) for a in spec.activations) else _SMOOTH_PAIRS
    chunks = range(0, q.shape[0], chunk)
    statistics = torch.cat([cross_statistics(spec, q[s : s + chunk], same[s : s + chunk]) for s in chunks], 1)
    out = []
    for values in statistics:  # K, Theta, K^1, Theta^1
        matrix = q.new_zeros(n1, n2)
        matrix.view(-1).index_copy_(0, flat, values)
        if same_inputs:
            matrix.view(-1).index_copy_(0, cols * n2 + rows, values)
        out.append(matrix)
    return FiniteWidthCorrections(*out)


def corrected_kernel(
    net, x1: torch.Tensor, x2: torch.Tensor | None = None, *, width: int | None = None
) -> CorrectedKernel:
    """The mean NNGP kernel and NTK of width-n networks, to O(1/n): ``K + K^1/n``, ``Theta + Theta^1/n``.

    See :func:`corrections` for the formulas, cost and accuracy; ``width`` (default: the
    network's hidden width) is the n of the expansion, at least 2.

    Examples
    --------
    >>> net = nk.serial(nk.Dense(64), nk.Tanh(), nk.Dense(64), nk.Tanh(), nk.Dense(1))
    >>> k = corrected_kernel(net, x, width=64)   # k.nngp, k.ntk: (N, N)
    """
    width = hidden_width(net) if width is None else check_width(width)
    c = corrections(net, x1, x2, width=width)
    return CorrectedKernel(c.nngp + c.nngp_correction / width, c.ntk + c.ntk_correction / width)


def _check_variances(spec, norms: torch.Tensor) -> None:
    """Every input's first-layer variance ``C_b + C_W x.x / n0`` must be positive."""
    if bool((spec.c_b[0] + spec.c_w[0] * norms <= 0).any()):
        raise NtkitError(
            "an input has zero first-layer variance (a zero input with no bias, or W_std = 0): "
            "its 1/n expansion is degenerate; give the first Dense a bias or drop that input"
        )
