"""``max_learning_rate``: the stability limit of discrete gradient descent on the squared error."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._errors import NtkitError
from ._checks import as_matrix, check_square, is_real

WHERE = "max_learning_rate"


def max_learning_rate(k_train_train, y_train_size: int | None = None, momentum: float = 0.0) -> float:
    """The largest learning rate at which full-batch gradient descent on the squared error converges.

    With the loss :math:`\\lVert f - Y\\rVert^2 / (2N)` (:math:`N` = ``y_train_size``), one step
    multiplies the training residual by :math:`I - \\eta\\Theta/N`, a contraction exactly when

    .. math:: \\eta < \\eta_{max} = \\frac{2 (1 + \\mu) N}{\\lambda_{max}(\\Theta)},

    with :math:`\\mu = 0` for plain gradient descent; heavy-ball momentum :math:`\\mu` widens the
    stable range by :math:`1 + \\mu` (Goh 2017, "Why momentum really works", Distill, section
    "The dynamics of momentum"; Lee et al. 2019, Section 2.4 and Fig. 3 for the critical
    learning rate of wide networks). This is neural-tangents' ``max_learning_rate``.

    Parameters
    ----------
    k_train_train : Tensor of shape (n, n), or an ntkit Kernel (its NTK is used)
        The NTK of the training inputs (the NNGP for readout-only training).
    y_train_size : int, optional
        :math:`N`, the number of targets (``y_train.numel()``, i.e. examples times outputs);
        None means one output per example (:math:`N = n`).
    momentum : float in [0, 1)

    Returns
    -------
    float
        :math:`\\eta_{max}`; ``inf`` for a kernel without a positive eigenvalue.

    Notes
    -----
    Cost: the eigenvalues of the kernel, :math:`O(n^3)` (about :math:`4n^3/3` flops).
    """
    if hasattr(k_train_train, "ntk") and hasattr(k_train_train, "nngp"):
        if k_train_train.ntk is None:
            raise NtkitError(f"{WHERE}: the Kernel has no NTK; compute it with get=('nngp', 'ntk')")
        k_train_train = k_train_train.ntk
    k = as_matrix(k_train_train, "k_train_train", WHERE)
    check_square(k, "k_train_train", WHERE)
    size = k.shape[0] if y_train_size is None else y_train_size
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, numbers.Integral) or size < 1:
        raise NtkitError(f"{WHERE}: y_train_size must be a positive integer (y_train.numel()), got {y_train_size!r}")
    if not is_real(momentum) or not 0 <= momentum < 1:
        raise NtkitError(f"{WHERE}: momentum must be a number in [0, 1), got {momentum!r}")
    top = float(torch.linalg.eigvalsh(k)[-1])
    if top <= 0:
        return math.inf
    return 2 * (1 + float(momentum)) * int(size) / top
