"""The mean output of a finite-width network trained to convergence with a frozen NTK, to O(1/n)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._errors import NtkitError
from ._architecture import check_points, check_width, hidden_width, read_mlp
from ._corrections import corrections
from ._dntk import _outputs
from ._four_point import four_point


class TrainedMean(NamedTuple):
    """``E[f(x_test)]`` after training, ``infinite + correction / n + O(1/n^2)``, each (N_test, O)."""

    infinite: torch.Tensor
    correction: torch.Tensor
    width: int

    @property
    def corrected(self) -> torch.Tensor:
        """``infinite + correction / width``: the prediction for the network's own width."""
        return self.infinite + self.correction / self.width


def trained_mean_frozen_ntk(
    net, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, *, width: int | None = None,
    outputs: int | None = None,
) -> TrainedMean:
    """Mean test output of width-n networks trained to convergence on MSE with their NTK frozen.

    A network trained by gradient flow on :math:`\\tfrac12\\lVert f(X) - Y\\rVert^2` with its
    NTK :math:`\\hat\\Theta` held at its random initial value (the linearized network of Lee et
    al. 2019, trained to convergence) outputs :math:`f(x) = f_0(x) - \\hat\\Theta_{x\\tilde A}
    \\hat\\Theta_{\\tilde A\\tilde A}^{-1}(f_0(\\tilde A) - Y)`, the inverse taken over the joint
    (output neuron, training input) index. By parity :math:`\\mathbb E[\\hat\\Theta\\cdots f_0] = 0`,
    so the mean is :math:`\\mathbb E[\\hat\\Theta_{x\\tilde A}\\hat\\Theta_{\\tilde A\\tilde A}^{-1}]Y`.
    Writing :math:`\\hat\\Theta = \\Theta + \\Theta^{1}/n + \\Delta` and expanding the inverse to
    second order in :math:`\\Delta` (the note §2.4(b); RYH ch. 10 gives the infinite-width part,
    ch. 8 the statistics; equation numbers not checked against the book), with
    :math:`S = \\tilde\\Theta^{-1}` over the training inputs and :math:`w = S Y`:

    .. math::
        \\mathbb E f(x) = \\Theta_{x\\tilde A} w + \\frac1n\\Big[\\Theta^{1}_{x\\tilde A} w
            - \\Theta_{x\\tilde A} S\\, \\Theta^{1}_{\\tilde A\\tilde A} w - E_{x\\tilde A} w
            + \\Theta_{x\\tilde A} S\\, E_{\\tilde A\\tilde A} w\\Big] + O(n^{-2}),

    where :math:`n\\,\\mathbb E[\\sum_{j}\\Delta_{ij;\\delta\\alpha} S_{\\alpha\\beta}
    \\Delta_{jk;\\beta\\gamma}] = \\delta_{ik} E_{\\delta\\gamma}` follows from the NTK variance
    :math:`n\\,\\mathbb E[\\Delta_{i_1i_2;a_1a_2}\\Delta_{i_3i_4;a_3a_4}] = \\delta_{i_1i_2}\\delta_{i_3i_4}
    A_{(a_1a_2)(a_3a_4)} + \\delta_{i_1i_3}\\delta_{i_2i_4}B_{a_1a_3a_2a_4} + \\delta_{i_1i_4}
    \\delta_{i_2i_3}B_{a_1a_4a_2a_3}` (RYH §8.3) summed over the n_L output neurons j:

    .. math::
        E_{\\delta\\gamma} = \\sum_{\\alpha\\beta} S_{\\alpha\\beta}\\big(A_{(\\delta\\alpha)(\\beta\\gamma)}
            + B_{\\delta\\beta\\alpha\\gamma} + n_L\\, B_{\\delta\\gamma\\alpha\\beta}\\big).

    This is the "frozen random NTK" part of the O(1/n) prediction. A network trained in full
    also moves its NTK during training (the dNTK, RYH ch. 11 and ∞), which adds another O(1/n)
    term that depends on the learning rate and is not included here.

    Cost: :func:`~ntkit.finite_width.four_point` over the N_train + N_test inputs, O(L N^4).

    Parameters
    ----------
    net : Serial or MLPSpec
        ``serial(Dense, act, ..., Dense)``; an MLPSpec needs ``width`` and ``outputs``.
    x_train, y_train : Tensor (N_train, d), (N_train, O) or (N_train,)
        Training inputs and targets (O must be the network's number of outputs, or 1 to use the
        same target for each).
    x_test : Tensor (N_test, d)
    width : int, optional
        The hidden width n (default: the network's own).
    outputs : int, optional
        The number of outputs n_L (default: the last Dense's width).

    Returns
    -------
    TrainedMean
        ``infinite`` and ``correction`` of shape (N_test, O); ``corrected`` their sum at ``width``.
    """
    x_train, x_test = check_points(x_train, "x_train"), check_points(x_test, "x_test")
    if x_train.shape[1] != x_test.shape[1]:
        raise NtkitError(f"x_train has {x_train.shape[1]} features but x_test has {x_test.shape[1]}")
    y = torch.as_tensor(y_train, dtype=torch.float64)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != x_train.shape[0]:
        raise NtkitError(f"y_train has shape {tuple(y.shape)}; expected ({x_train.shape[0]}, outputs)")
    width = hidden_width(net) if width is None else check_width(width)
    n_out = _outputs(net) if outputs is None else outputs
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise NtkitError(f"outputs must be a positive integer, got {n_out!r}")
    spec = read_mlp(net, width, x_train.shape[1])
    n_train = x_train.shape[0]
    x = torch.cat([x_train, x_test])
    stats = four_point(spec, x)
    theta_1 = corrections(spec, x).ntk_correction
    train, test = slice(0, n_train), slice(n_train, None)
    factor = torch.linalg.cholesky(stats.ntk[train, train])
    s = torch.cholesky_inverse(factor)
    w = s @ y
    # E[delta, gamma] for delta over all inputs, gamma over the training inputs
    a, b = stats.A[:, train, train, train], stats.B
    e = (
        torch.einsum("ab,dabg->dg", s, a)
        + torch.einsum("ab,dbag->dg", s, b[:, train, train, train])
        + n_out * torch.einsum("ab,dgab->dg", s, b[:, train, train, train])
    )
    theta = stats.ntk
    infinite = theta[test, train] @ w
    correction = (
        theta_1[test, train] @ w
        - theta[test, train] @ (s @ (theta_1[train, train] @ w))
        - e[test] @ w
        + theta[test, train] @ (s @ (e[train] @ w))
    )
    return TrainedMean(infinite, correction, width)
