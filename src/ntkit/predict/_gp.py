"""``gp_inference``: the posterior of the NNGP, the NTK ensemble at convergence, and the NTK-GP."""

from __future__ import annotations

import torch

from .._errors import NtkitError
from ._checks import as_matrix, as_targets, check_cross, check_diag_reg, check_square
from ._spectral import TrainKernel
from ._types import Gaussian, shape_covariance, shape_outputs

WHERE = "gp_inference"
GETS = ("nngp", "ntk", "ntkgp")


def gp_inference(
    k_train_train,
    y_train: torch.Tensor,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> "GPPredictor":
    """Gaussian predictions at the end of training, or of exact Bayesian inference, from kernels.

    Three modes share one Cholesky factorization per kernel (``get``):

    ``"nngp"``
        The exact posterior of the NNGP prior :math:`K` (an infinitely wide Bayesian network;
        Lee et al. 2018; Rasmussen & Williams 2006, eqs. 2.23-2.24):

        .. math:: \\mu = K_{*X} K^{-1} Y, \\qquad \\Sigma = K_{**} - K_{*X} K^{-1} K_{X*}.
    ``"ntk"``
        The mean and covariance over initializations of infinitely wide networks trained to
        convergence by gradient descent on the squared error (Lee et al. 2019, eqs. 15-16 at
        :math:`t \\to \\infty`), with :math:`\\Theta` the NTK and :math:`K` the NNGP:

        .. math::
            \\mu = \\Theta_{*X} \\Theta^{-1} Y, \\qquad
            \\Sigma = K_{**} + \\Theta_{*X} \\Theta^{-1} K \\Theta^{-1} \\Theta_{X*}
                    - \\left(\\Theta_{*X} \\Theta^{-1} K_{X*} + \\text{transpose}\\right).
    ``"ntkgp"``
        The posterior of a GP whose prior covariance is the NTK (He, Lakshminarayanan & Teh
        2020): the ``"nngp"`` formulas with :math:`\\Theta` in place of :math:`K`.

    The inverted kernel (:math:`K` or :math:`\\Theta` of the training inputs) gets the ridge
    ``diag_reg * trace / n`` (or ``diag_reg`` with ``diag_reg_absolute_scale=True``), as in
    neural-tangents; the NNGP :math:`K` inside the ``"ntk"`` covariance does not.

    Parameters
    ----------
    k_train_train : Kernel or Tensor, shape (n, n)
        The kernels between the training inputs (``net.kernel(x_train)``). A plain matrix serves
        where one kernel suffices: it is :math:`K` for ``"nngp"``, :math:`\\Theta` for
        ``"ntkgp"`` and for the ``"ntk"`` mean; the ``"ntk"`` covariance needs a Kernel with
        both.
    y_train : Tensor, shape (n, outputs) or (n,)
    diag_reg : float
    diag_reg_absolute_scale : bool

    Returns
    -------
    GPPredictor
        ``predictor(k_test_train=None, k_test_test=None, get="nngp")``: the mean of shape
        (m, outputs), or :class:`Gaussian` ``(mean, covariance (m, m))`` when ``k_test_test``
        is given. ``k_test_train=None`` is the training set, where the result is
        :math:`\\mathcal N(Y, 0)` as in neural-tangents (for the regularized fit on the training
        inputs pass ``k_test_train=k_train_train``).

    Notes
    -----
    Cost: one Cholesky factorization of the :math:`n \\times n` kernel per mode used
    (:math:`n^3/3` flops, cached); a call costs :math:`2 n^2 (c + m)` flops for the mean and
    :math:`O(n^2 m + n m^2)` for the covariance.

    References
    ----------
    Rasmussen & Williams, "Gaussian processes for machine learning", MIT Press 2006. Lee et al.,
    "Deep neural networks as Gaussian processes", ICLR 2018. Lee et al., "Wide neural networks of
    any depth evolve as linear models under gradient descent", NeurIPS 2019. He,
    Lakshminarayanan, Teh, "Bayesian deep ensembles via the neural tangent kernel", NeurIPS 2020.
    """
    first = _any_matrix(k_train_train, "k_train_train")
    first = as_matrix(first, "k_train_train", WHERE)
    check_square(first, "k_train_train", WHERE)
    y, was_1d = as_targets(y_train, first.shape[0], first, WHERE)
    return GPPredictor(k_train_train, y, was_1d, check_diag_reg(diag_reg, WHERE), bool(diag_reg_absolute_scale))


class GPPredictor:
    """The predictor returned by :func:`gp_inference`; see there."""

    def __init__(self, k_train_train, y: torch.Tensor, was_1d: bool, diag_reg: float, absolute: bool):
        self._k_train_train = k_train_train
        self.y_train = y
        self._was_1d = was_1d
        self.diag_reg = diag_reg
        self.absolute = absolute
        self._factors: dict[str, TrainKernel] = {}

    def train_kernel(self, name: str) -> TrainKernel:
        """The regularized train-train ``name`` kernel ("nngp" or "ntk"), factorized once."""
        if name not in self._factors:
            k = matrix(self._k_train_train, name, "k_train_train", like=self.y_train)
            check_square(k, "k_train_train", WHERE)
            self._factors[name] = TrainKernel(k, self.diag_reg, self.absolute, f"k_train_train ({name})", WHERE)
        return self._factors[name]

    def __call__(self, k_test_train=None, k_test_test=None, get: str = "nngp"):
        """Posterior mean (and covariance, when ``k_test_test`` is given) on the test inputs.

        Parameters
        ----------
        k_test_train : Kernel or Tensor of shape (m, n), optional
            Kernels between test and training inputs; None means the training set.
        k_test_test : Kernel or Tensor of shape (m, m), optional
            Kernels between the test inputs (the NNGP for "nngp" and "ntk", the NTK for
            "ntkgp"); give it for the covariance.
        get : "nngp", "ntk" or "ntkgp"

        Returns
        -------
        Tensor of shape (m, outputs), or Gaussian (mean, covariance of shape (m, m)).
        """
        if isinstance(k_test_train, str) or (k_test_train is None and k_test_test is not None):
            raise NtkitError(
                f"{WHERE}: the predictor takes (k_test_train, k_test_test=None, get='nngp'), got "
                f"k_test_train={_describe(k_test_train)} and k_test_test={_describe(k_test_test)} "
                "(neural-tangents' order is (get, k_test_train, k_test_test)); the covariance needs "
                "k_test_train"
            )
        if get not in GETS:
            raise NtkitError(f"{WHERE}: get must be 'nngp', 'ntk' or 'ntkgp', got {get!r}")
        name = "nngp" if get == "nngp" else "ntk"
        y = self.y_train
        if k_test_train is None:
            mean = y.clone()
            cov = None if k_test_test is None else torch.zeros(y.shape[0], y.shape[0], dtype=y.dtype, device=y.device)
        else:
            kernel = self.train_kernel(name)
            k_td = matrix(k_test_train, name, "k_test_train", like=y)
            check_cross(k_td, kernel.n, "k_test_train", WHERE)
            mean = k_td @ kernel.solve(y)
            cov = None
            if k_test_test is not None:
                prior = "ntk" if get == "ntkgp" else "nngp"
                k_tt = matrix(k_test_test, prior, "k_test_test", like=y)
                if k_tt.shape != (k_td.shape[0], k_td.shape[0]):
                    raise NtkitError(
                        f"{WHERE}: k_test_test has shape {tuple(k_tt.shape)}; expected "
                        f"{(k_td.shape[0], k_td.shape[0])} for the {k_td.shape[0]} test inputs of k_test_train"
                    )
                if get == "ntk":
                    if not _has_both(self._k_train_train) or not _has_both(k_test_train):
                        raise NtkitError(
                            f"{WHERE}: the covariance for get='ntk' needs both the NNGP and the NTK "
                            "of k_train_train and k_test_train; pass ntkit Kernels computed with "
                            "get=('nngp', 'ntk')"
                        )
                    nngp_dd = self.train_kernel("nngp").k
                    nngp_td = matrix(k_test_train, "nngp", "k_test_train", like=y)
                    cov = ntk_covariance(kernel, nngp_dd, k_td, nngp_td, k_tt)
                else:
                    cov = gp_covariance(kernel, k_td, k_tt)
        mean = shape_outputs(mean[None], (), self._was_1d)
        if cov is None:
            return mean
        return Gaussian(mean, shape_covariance(cov[None], ()))


def _describe(value) -> str:
    return repr(value) if value is None or isinstance(value, str) else f"a {type(value).__name__}"


def gp_covariance(kernel: TrainKernel, k_td: torch.Tensor, k_tt: torch.Tensor) -> torch.Tensor:
    """:math:`K_{**} - K_{*X} K^{-1} K_{X*}` as :math:`K_{**} - W^T W`, :math:`W = L^{-1} K_{X*}`."""
    w = torch.linalg.solve_triangular(kernel.cholesky(), k_td.T, upper=False)
    return k_tt - w.T @ w


def ntk_covariance(
    kernel: TrainKernel, nngp_dd: torch.Tensor, ntk_td: torch.Tensor, nngp_td: torch.Tensor, nngp_tt: torch.Tensor
) -> torch.Tensor:
    """Lee et al. 2019, eq. 16 at :math:`t \\to \\infty`, with :math:`A = \\Theta_{*X}\\Theta^{-1}`:
    :math:`K_{**} + A K A^T - A K_{X*} - (A K_{X*})^T`."""
    a = kernel.solve(ntk_td.T).T  # (m, n)
    cross = a @ nngp_td.T
    return nngp_tt + a @ (nngp_dd @ a.T) - cross - cross.T


def _has_both(k) -> bool:
    return getattr(k, "nngp", None) is not None and getattr(k, "ntk", None) is not None


def _any_matrix(k, argument: str):
    """The first kernel matrix held by ``k`` (a Kernel-like object) or ``k`` itself."""
    if hasattr(k, "nngp") or hasattr(k, "ntk"):
        for name in ("nngp", "ntk"):
            if getattr(k, name, None) is not None:
                return getattr(k, name)
        raise NtkitError(f"{WHERE}: {argument} holds neither an NNGP nor an NTK")
    return k


def matrix(k, name: str, argument: str, like: torch.Tensor) -> torch.Tensor:
    """The ``name`` kernel of ``k`` (a Kernel or anything with ``.nngp``/``.ntk``), or ``k`` itself
    when it is a plain matrix, validated and on ``like``'s dtype and device."""
    if hasattr(k, "nngp") or hasattr(k, "ntk"):
        value = getattr(k, name, None)
        if value is None:
            raise NtkitError(
                f"{WHERE}: {argument} has no {name.upper()} (it was computed without it); "
                f"compute the kernels with get=('nngp', 'ntk')"
            )
        k, argument = value, f"{argument}.{name}"
    return as_matrix(k, argument, WHERE, like=like)
