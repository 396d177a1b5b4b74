"""``gradient_descent_mse``: closed-form gradient descent on the squared error, for given kernels."""

from __future__ import annotations

import torch

from .._errors import NtkitError
from ..kernel import Kernel
from ._checks import (
    as_matrix, as_outputs, as_targets, as_times, check_cross, check_diag_reg, check_flag, check_learning_rate,
    check_square,
)
from ._spectral import TrainKernel, check_stable, decay, in_basis
from ._types import TrainTest, shape_outputs

WHERE = "gradient_descent_mse"


def gradient_descent_mse(
    k_train_train: torch.Tensor,
    y_train: torch.Tensor,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    *,
    discrete: bool = False,
) -> "MSEPredictor":
    """Outputs of one network trained by gradient descent on the squared error, in closed form.

    The network is linear in its parameters around initialization (exactly so at infinite width,
    or for a linearized network); its kernel :math:`\\Theta` (the NTK, or the NNGP when only the
    readout layer is trained) stays fixed. With the loss of neural-tangents,
    :math:`\\mathcal L = \\lVert f(X) - Y \\rVert^2 / (2 N)` where :math:`N` is ``y_train.numel()``,
    gradient flow at learning rate :math:`\\eta` is :math:`\\dot f = -(\\eta / N)\\, \\Theta\\,
    (f - Y)` (Jacot et al. 2018, Section 5), whose solution is (Lee et al. 2019, eqs. 10-11)

    .. math::
        f_t(X) &= Y + e^{-\\eta \\Theta t / N} \\left(f_0(X) - Y\\right), \\\\
        f_t(x) &= f_0(x) - \\Theta(x, X)\\, \\Theta^{-1}
                  \\left(I - e^{-\\eta \\Theta t / N}\\right) \\left(f_0(X) - Y\\right).

    :math:`\\Theta` here is ``k_train_train`` plus the ridge ``diag_reg * trace / n`` (or
    ``diag_reg`` with ``diag_reg_absolute_scale=True``). With ``discrete=True``, ``t`` counts
    full-batch gradient-descent steps of size :math:`\\eta` and :math:`e^{-\\eta\\Theta t/N}`
    becomes :math:`(I - \\eta\\Theta/N)^t`: the exact outputs of a linear model after ``t``
    steps, stable only for :math:`\\eta < 2N/\\lambda_{max}` (:func:`max_learning_rate`).

    Parameters
    ----------
    k_train_train : Tensor, shape (n, n)
        The kernel between the training inputs (e.g. ``net.kernel(x_train).ntk``). Its dtype and
        device are those of the computation and the results.
    y_train : Tensor, shape (n, outputs) or (n,)
        Targets. The kernel is shared by all outputs (it is per output unit).
    learning_rate : float
        :math:`\\eta`; only the product :math:`\\eta t` matters for gradient flow.
    diag_reg : float
        Ridge, relative to the mean of the kernel's diagonal unless ``diag_reg_absolute_scale``.
    diag_reg_absolute_scale : bool
    discrete : bool, keyword-only
        Discrete gradient-descent steps instead of gradient flow. (In neural-tangents' signature
        this position holds ``trace_axes``; ntkit's targets are ``(n, outputs)``, with the kernel
        shared by all outputs.)

    Returns
    -------
    MSEPredictor
        ``predictor(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` returns
        :class:`TrainTest` ``(train, test)`` outputs at time(s) ``t``.

    Notes
    -----
    Nothing is factorized until the predictor is called. For a finite ``t`` the first call
    computes the eigendecomposition of the regularized kernel (:math:`O(n^3)`, about
    :math:`9n^3` flops, two :math:`n \\times n` matrices kept); for ``t=None`` a Cholesky
    factor (:math:`n^3/3` flops, one matrix kept). Both are cached for every later call; a call
    then costs :math:`O(T n^2 c + T m n c)` for :math:`T` times, :math:`m` test points and
    :math:`c` outputs.

    References
    ----------
    Jacot, Gabriel, Hongler, "Neural tangent kernel: convergence and generalization in neural
    networks", NeurIPS 2018. Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington,
    "Wide neural networks of any depth evolve as linear models under gradient descent",
    NeurIPS 2019.
    """
    if isinstance(k_train_train, Kernel):
        raise NtkitError(
            f"{WHERE}: k_train_train is an ntkit Kernel; pass one matrix: k.ntk (all layers "
            "trained) or k.nngp (readout only)"
        )
    k = as_matrix(k_train_train, "k_train_train", WHERE)
    check_square(k, "k_train_train", WHERE)
    y, was_1d = as_targets(y_train, k.shape[0], k, WHERE)
    return MSEPredictor(
        TrainKernel(k, check_diag_reg(diag_reg, WHERE),
                    check_flag(diag_reg_absolute_scale, "diag_reg_absolute_scale", WHERE), "k_train_train", WHERE),
        y, was_1d, check_learning_rate(learning_rate, WHERE), check_flag(discrete, "discrete", WHERE),
    )


class MSEPredictor:
    """The predictor returned by :func:`gradient_descent_mse`; see there.

    Attributes
    ----------
    kernel : TrainKernel
        The train-train kernel with its cached factorizations.
    y_train : Tensor, shape (n, outputs)
    learning_rate : float
    discrete : bool
    """

    def __init__(self, kernel: TrainKernel, y: torch.Tensor, was_1d: bool, learning_rate: float, discrete: bool):
        self.kernel = kernel
        self.y_train = y
        self._was_1d = was_1d
        self.learning_rate = learning_rate
        self.discrete = discrete

    def __call__(self, t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None) -> TrainTest:
        """Train and test outputs at time(s) ``t``.

        Parameters
        ----------
        t : float, Tensor of any shape, or None
            Training time(s), :math:`\\ge 0` (steps with ``discrete=True``); None is the end
            of training (:math:`t \\to \\infty`, by a linear solve). The outputs get
            ``t.shape`` as leading axes.
        fx_train_0 : float, Tensor of shape (n, outputs), or None
            Outputs of the network on the training inputs at initialization (0 for the mean
            of an infinite ensemble). None: do not compute training outputs (and take 0 for
            the test prediction).
        fx_test_0 : float, Tensor of shape (m, outputs), or None
            Outputs on the test inputs at initialization; None means 0 when ``k_test_train``
            is given.
        k_test_train : Tensor, shape (m, n), optional
            The kernel between test and training inputs; without it there are no test outputs.

        Returns
        -------
        TrainTest
            ``train`` of shape (*t.shape, n, outputs) (None if ``fx_train_0`` is None) and
            ``test`` of shape (*t.shape, m, outputs) (None without ``k_test_train``).
        """
        k, y = self.kernel.k, self.y_train
        n, c = y.shape
        k_td = f_test_0 = None
        if k_test_train is not None:
            k_td = as_matrix(k_test_train, "k_test_train", WHERE, like=k)
            check_cross(k_td, n, "k_test_train", WHERE)
            test_0 = 0.0 if fx_test_0 is None else fx_test_0
            f_test_0 = as_outputs(test_0, (k_td.shape[0], c), "fx_test_0", k, WHERE)
        elif fx_test_0 is not None:
            raise NtkitError(f"{WHERE}: fx_test_0 was given without k_test_train; pass both for test outputs")
        if fx_train_0 is None and k_td is None:
            raise NtkitError(f"{WHERE}: fx_train_0=None and no k_test_train: there is nothing to predict")
        f0 = as_outputs(0.0 if fx_train_0 is None else fx_train_0, (n, c), "fx_train_0", k, WHERE)
        residual = f0 - y
        size = y.numel()

        if t is None:
            if self.discrete:
                check_stable(self.kernel, self.learning_rate, size, WHERE)
            train = None if fx_train_0 is None else y.clone()[None]
            test = None if k_td is None else (f_test_0 - k_td @ self.kernel.solve(residual))[None]
            return TrainTest(shape_outputs(train, (), self._was_1d), shape_outputs(test, (), self._was_1d))

        times = as_times(t, k, WHERE, integer=self.discrete)
        evals, evecs = self.kernel.eigh()
        if self.discrete:
            check_stable(self.kernel, self.learning_rate, size, WHERE)
        one_minus_d, g = decay(evals, times, self.learning_rate, size, self.discrete)
        projected = evecs.T @ residual  # (n, c): the residual in the eigenbasis
        train = test = None
        if fx_train_0 is not None:
            train = f0 - in_basis(evecs, one_minus_d, projected)
        if k_td is not None:
            test = f_test_0 - k_td @ in_basis(evecs, g, projected)
        shape = tuple(times.shape)
        return TrainTest(shape_outputs(train, shape, self._was_1d), shape_outputs(test, shape, self._was_1d))
