"""Kernel ridge regression through a Cholesky factorization: the minimal predictor of the demo.

Private: the public ``ntkit.predict`` module (gradient-descent dynamics, GP inference with
covariances) supersedes it.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from ._errors import NtkitError


def kernel_regression(
    k_train_train: torch.Tensor,
    k_test_train: torch.Tensor,
    y_train: torch.Tensor,
    diag_reg: float = 1e-4,
) -> torch.Tensor:
    """Mean prediction of kernel ridge regression (the GP posterior mean).

    .. math::
        f(X_*) = K_{*X} \\left(K_{XX} + \\lambda \\frac{\\operatorname{tr} K_{XX}}{n} I\\right)^{-1} Y

    The ridge is relative to the mean of the kernel's diagonal, as ``diag_reg`` in
    neural-tangents, so it does not depend on the kernel's overall scale. With the NNGP this
    is the posterior mean of the Gaussian process (Lee et al. 2018); with the NTK and
    ``diag_reg=0`` it is the mean output of an infinite ensemble of infinitely wide networks
    trained to convergence by gradient descent on the squared error (Lee et al. 2019).

    Cost: one Cholesky factorization, :math:`O(n^3)`, and :math:`O(n^2 (c + m))` for the
    solve and the product, in float64 on the CPU (scipy).

    Parameters
    ----------
    k_train_train : Tensor, shape (n, n)
        Symmetric positive (semi-)definite kernel between training inputs.
    k_test_train : Tensor, shape (m, n)
        Kernel between test and training inputs.
    y_train : Tensor, shape (n, c) or (n,)
        Training targets.
    diag_reg : float
        :math:`\\lambda \\ge 0`. 0 interpolates the training targets exactly, if
        ``k_train_train`` is positive definite.

    Returns
    -------
    Tensor, shape (m, c) or (m,)
        Predictions, with the device of ``y_train`` and its dtype if it is floating (else float64).
    """
    k_xx, k_sx, y = (_as_numpy(a) for a in (k_train_train, k_test_train, y_train))
    n = k_xx.shape[0]
    if k_xx.ndim != 2 or k_xx.shape != (n, n):
        raise NtkitError(f"kernel_regression: k_train_train has shape {k_xx.shape}; expected (n, n)")
    if k_sx.ndim != 2 or k_sx.shape[1] != n:
        raise NtkitError(f"kernel_regression: k_test_train has shape {k_sx.shape}; expected (m, {n})")
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise NtkitError(f"kernel_regression: y_train has shape {y.shape}; expected ({n}, c) or ({n},)")
    if not (np.isfinite(diag_reg) and diag_reg >= 0):
        raise NtkitError(f"kernel_regression: diag_reg must be a finite number >= 0, got {diag_reg!r}")

    regularized = k_xx + (diag_reg * np.trace(k_xx) / n) * np.eye(n)
    try:
        factor = scipy.linalg.cho_factor(regularized, lower=True, check_finite=True)
    except np.linalg.LinAlgError:
        raise NtkitError(
            f"kernel_regression: k_train_train + diag_reg * mean(diag) * I is not positive "
            f"definite (diag_reg={diag_reg!r}); increase diag_reg"
        ) from None
    prediction = k_sx @ scipy.linalg.cho_solve(factor, y, check_finite=False)
    if isinstance(y_train, torch.Tensor) and y_train.is_floating_point():
        return torch.from_numpy(prediction).to(dtype=y_train.dtype, device=y_train.device)
    device = y_train.device if isinstance(y_train, torch.Tensor) else None
    return torch.from_numpy(prediction).to(device=device)


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
    return np.asarray(a, dtype=np.float64)
