"""``gradient_descent_mse_ensemble``: mean and covariance over initializations of infinitely wide
networks trained by gradient descent on the squared error, straight from the inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._errors import NtkitError
from ..layers import Layer
from ._checks import (
    as_matrix, as_targets, as_times, check_cross, check_diag_reg, check_flag, check_learning_rate, check_square,
)
from ._gp import gp_covariance, matrix, ntk_covariance
from ._spectral import TrainKernel, check_stable, decay, in_basis
from ._types import Gaussian, shape_covariance, shape_outputs

WHERE = "gradient_descent_mse_ensemble"
GETS = ("nngp", "ntk")


def gradient_descent_mse_ensemble(
    net: Layer | Callable,
    x_train,
    y_train: torch.Tensor,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    *,
    discrete: bool = False,
    dtype: torch.dtype = torch.float64,
) -> "EnsemblePredictor":
    """Outputs of an infinite ensemble of infinitely wide networks after gradient-descent training.

    At infinite width the outputs of a network at initialization are a Gaussian process with
    the NNGP :math:`K`, and training by gradient flow on :math:`\\lVert f(X) - Y\\rVert^2/(2N)`
    (:math:`N` = ``y_train.numel()``) is linear with the NTK :math:`\\Theta`, so after time
    :math:`t` the outputs are Gaussian with (Lee et al. 2019, eqs. 15-16)

    .. math::
        \\mu_t(x) &= \\Theta(x, X)\\, \\Theta^{-1} \\left(I - e^{-\\eta \\Theta t / N}\\right) Y, \\\\
        \\Sigma_t(x, x') &= K(x, x') + \\Theta(x, X)\\, \\Theta^{-1} (I - e^{-\\eta\\Theta t/N})\\,
            K\\, (I - e^{-\\eta\\Theta t/N})\\, \\Theta^{-1} \\Theta(X, x') \\\\
            &\\quad - \\left(\\Theta(x, X)\\, \\Theta^{-1} (I - e^{-\\eta\\Theta t/N})\\,
            K(X, x') + (x \\leftrightarrow x')\\right).

    ``get="nngp"`` is training the readout layer only, whose tangent kernel is the NNGP: the
    same formulas with :math:`\\Theta = K`, where the covariance simplifies to
    :math:`K(x, x') - K(x, X) K^{-1} (I - e^{-2\\eta K t/N}) K(X, x')`. At ``t=None``
    (:math:`t \\to \\infty`) the result is :func:`gp_inference`'s. ``diag_reg``,
    ``diag_reg_absolute_scale`` and ``discrete`` are as in :func:`gradient_descent_mse`; with a
    ridge :math:`\\lambda`, ``get="nngp"`` puts :math:`K + \\lambda I` in every place of the
    simplified covariance, as neural-tangents does: the posterior of a GP with observation noise
    :math:`\\lambda`, not the covariance of regularized training from the unregularized prior.

    Parameters
    ----------
    net : ntkit Layer, or callable
        The architecture, whose ``net.kernel`` gives the kernels; or any function
        ``kernel_fn(x1, x2, get)`` (``x2`` None for ``x1`` with itself, ``get`` a tuple of
        "nngp"/"ntk") returning an object with ``.nngp`` and ``.ntk`` matrices, so that kernels
        from any source work (e.g. slices of precomputed matrices, with indices as inputs).
    x_train : Tensor, shape (n, features), or whatever ``kernel_fn`` takes
    y_train : Tensor, shape (n, outputs) or (n,)
    learning_rate, diag_reg, diag_reg_absolute_scale, discrete (keyword-only)
        See :func:`gradient_descent_mse`.
    dtype : torch.float64 (default) or torch.float32
        Precision of the kernels computed by ``net.kernel`` (ignored for a ``kernel_fn``).

    Returns
    -------
    EnsemblePredictor
        ``predictor(x_test=None, t=None, get="ntk", compute_cov=False)``.

    Notes
    -----
    The train-train kernels are computed at the first call and cached, as are the
    eigendecomposition (finite ``t``, :math:`O(n^3)`) and the Cholesky factor (``t=None``,
    :math:`n^3/3` flops) of each kernel used. A call with :math:`m` test inputs then costs the
    test kernels, :math:`O(n^2 m)` for the mean, and :math:`O(n^2 m + n m^2)` per time for the
    covariance.

    Examples
    --------
    >>> predict = nk.predict.gradient_descent_mse_ensemble(net, x_train, y_train, diag_reg=1e-4)
    >>> mean = predict(x_test, t=None, get="ntk")
    >>> mean, cov = predict(x_test, t=10.0, get="nngp", compute_cov=True)
    """
    if isinstance(net, Layer):
        def kernel_fn(x1, x2, get):
            return net.kernel(x1, x2, get=get, dtype=dtype)
    elif callable(net):
        kernel_fn = net
    else:
        raise NtkitError(
            f"{WHERE}: net must be an ntkit network or a function kernel_fn(x1, x2, get), "
            f"got {type(net).__name__}"
        )
    try:
        n = len(x_train)
    except TypeError:
        raise NtkitError(f"{WHERE}: x_train must have one entry per example, got {type(x_train).__name__}") from None
    like = torch.empty(0, dtype=dtype, device=x_train.device if isinstance(x_train, torch.Tensor) else None)
    as_targets(y_train, n, like, WHERE)  # early check of the shapes; moved to the kernel's device later
    return EnsemblePredictor(
        kernel_fn, x_train, y_train, check_learning_rate(learning_rate, WHERE),
        check_diag_reg(diag_reg, WHERE), check_flag(diag_reg_absolute_scale, "diag_reg_absolute_scale", WHERE),
        check_flag(discrete, "discrete", WHERE),
    )


class EnsemblePredictor:
    """The predictor returned by :func:`gradient_descent_mse_ensemble`; see there."""

    def __init__(self, kernel_fn, x_train, y_train, learning_rate, diag_reg, absolute, discrete):
        self.kernel_fn = kernel_fn
        self.x_train = x_train
        self._y_raw = y_train
        self.learning_rate = learning_rate
        self.diag_reg = diag_reg
        self.absolute = absolute
        self.discrete = discrete
        self._k_train: dict[str, torch.Tensor] = {}
        self._factors: dict[str, TrainKernel] = {}
        self.y_train: torch.Tensor | None = None
        self._was_1d = False

    def train_kernel(self, name: str) -> TrainKernel:
        """The train-train ``name`` kernel ("nngp" or "ntk") with its cached factorizations."""
        if name not in self._factors:
            self._factors[name] = TrainKernel(
                self._raw_train(name), self.diag_reg, self.absolute, f"the train-train {name.upper()}", WHERE
            )
        return self._factors[name]

    def _raw_train(self, name: str) -> torch.Tensor:
        if name not in self._k_train:
            get = ("nngp", "ntk") if name == "ntk" else ("nngp",)
            k = self.kernel_fn(self.x_train, None, get)
            described = f"kernel_fn(x_train, None, {get})"
            like = self._k_train.get("nngp")
            if like is None:
                like = as_matrix(_first_matrix(k), described, WHERE)
            for g in get:
                m = matrix(k, g, described, like=like)
                check_square(m, f"the train-train {g.upper()}", WHERE)
                self._k_train[g] = m
            if self.y_train is None:
                first = self._k_train["nngp"]
                self.y_train, self._was_1d = as_targets(self._y_raw, first.shape[0], first, WHERE)
        return self._k_train[name]

    def __call__(self, x_test=None, *, t=None, get: str = "ntk", compute_cov: bool = False):
        """Mean (and covariance) of the outputs on ``x_test`` at time(s) ``t``.

        The arguments after ``x_test`` are keyword-only: neural-tangents' predictor takes
        ``(t, x_test, get, compute_cov)`` in that order, and a call written for it must not run
        with the inputs read as times.

        Parameters
        ----------
        x_test : Tensor of shape (m, features), optional
            Test inputs; None means the training inputs, where the ridge acts as observation
            noise (as in neural-tangents; pass ``x_test=x_train`` for the regularized fit).
        t : float, Tensor of any shape, or None
            Training time(s) (steps with ``discrete=True``); None is the end of training.
        get : "ntk" (all layers trained) or "nngp" (readout layer only)
        compute_cov : bool
            Also return the covariance between test inputs (the same for every output).

        Returns
        -------
        Tensor of shape (*t.shape, m, outputs), or Gaussian (mean, covariance of shape
        (*t.shape, m, m)) when ``compute_cov``.
        """
        if get not in GETS:
            raise NtkitError(f"{WHERE}: get must be 'ntk' or 'nngp', got {get!r} (use gp_inference for 'ntkgp')")
        kernel = self.train_kernel(get)
        if compute_cov and get == "ntk":
            self.train_kernel("nngp")
        y = self.y_train
        test = None if x_test is None else self._test_kernels(x_test, get, compute_cov)
        size = y.numel()
        if t is None:
            if self.discrete:
                check_stable(kernel, self.learning_rate, size, WHERE)
            mean, cov = self._infinite(kernel, test, get, compute_cov)
            shape = ()
        else:
            times = as_times(t, y, WHERE, integer=self.discrete)
            evals, evecs = kernel.eigh()
            if self.discrete:
                check_stable(kernel, self.learning_rate, size, WHERE)
            decays = decay(evals, times, self.learning_rate, size, self.discrete)
            mean, cov = self._finite(kernel, test, get, compute_cov, decays)
            shape = tuple(times.shape)
        mean = shape_outputs(mean, shape, self._was_1d)
        return Gaussian(mean, shape_covariance(cov, shape)) if compute_cov else mean

    def _test_kernels(self, x_test, get: str, compute_cov: bool) -> dict[str, torch.Tensor]:
        names = ("nngp", "ntk") if get == "ntk" else ("nngp",)
        k_td = self.kernel_fn(x_test, self.x_train, names)
        like = self.y_train
        out = {}
        for name in names if (compute_cov or get == "nngp") else ("ntk",):
            out[name] = matrix(k_td, name, f"kernel_fn(x_test, x_train, {names})", like=like)
            check_cross(out[name], like.shape[0], f"the test-train {name.upper()}", WHERE)
        if compute_cov:
            k_tt = matrix(self.kernel_fn(x_test, None, ("nngp",)), "nngp", "kernel_fn(x_test, None, ('nngp',))", like=like)
            m = out[get].shape[0]
            if k_tt.shape != (m, m):
                raise NtkitError(f"{WHERE}: the test-test NNGP has shape {tuple(k_tt.shape)}; expected {(m, m)}")
            out["test_test"] = k_tt
        return out

    def _infinite(self, kernel: TrainKernel, test, get: str, compute_cov: bool):
        y = self.y_train
        if test is None:
            cov = torch.zeros(1, y.shape[0], y.shape[0], dtype=y.dtype, device=y.device) if compute_cov else None
            return y.clone()[None], cov
        mean = (test[get] @ kernel.solve(y))[None]
        if not compute_cov:
            return mean, None
        if get == "nngp":
            cov = gp_covariance(kernel, test["nngp"], test["test_test"])
        else:
            cov = ntk_covariance(kernel, self.train_kernel("nngp").k, test["ntk"], test["nngp"], test["test_test"])
        return mean, cov[None]

    def _finite(self, kernel: TrainKernel, test, get: str, compute_cov: bool, decays):
        one_minus_d, g = decays
        evals, evecs = kernel.eigh()
        projected = evecs.T @ self.y_train
        if test is None:
            mean = in_basis(evecs, one_minus_d, projected)
        else:
            mean = test[get] @ in_basis(evecs, g, projected)
        if not compute_cov:
            return mean, None
        d = 1 - one_minus_d
        if test is None:
            if get == "nngp":  # V diag(lambda d^2) V^T
                weights = evals.clamp(min=0)[None, :] * d.square()
                cov = torch.stack([(evecs * w) @ evecs.T for w in weights])
            else:  # E K E with E = V diag(d) V^T
                nngp = self.train_kernel("nngp").k
                es = [(evecs * w) @ evecs.T for w in d]
                cov = torch.stack([e @ nngp @ e for e in es])
            return mean, cov
        b = test[get] @ evecs  # (m, n): the test-train kernel in the eigenbasis
        if get == "nngp":  # K** - B diag((1 - d^2) / lambda) B^T, and (1 - d^2)/lambda = g (1 + d)
            cov = torch.stack([test["test_test"] - (b * w) @ b.T for w in g * (1 + d)])
            return mean, cov
        nngp_dd, nngp_td, nngp_tt = self.train_kernel("nngp").k, test["nngp"], test["test_test"]
        covs = []
        for w in g:
            a = (b * w) @ evecs.T  # (m, n): Theta(x, X) Theta^{-1} (I - e^{-eta Theta t / N})
            cross = a @ nngp_td.T
            covs.append(nngp_tt + a @ (nngp_dd @ a.T) - cross - cross.T)
        return mean, torch.stack(covs)


def _first_matrix(k) -> torch.Tensor:
    for name in ("nngp", "ntk"):
        value = getattr(k, name, None)
        if value is not None:
            return value
    raise NtkitError(f"{WHERE}: kernel_fn returned {type(k).__name__}, with neither .nngp nor .ntk")
