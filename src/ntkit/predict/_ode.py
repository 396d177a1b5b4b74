"""``gradient_descent``: function-space gradient descent on any loss, by an ODE solver."""

from __future__ import annotations

import importlib
import math

import torch

from .._errors import NtkitError
from ..kernel import Kernel
from ._checks import (
    as_matrix, as_outputs, as_targets, as_times, check_cross, check_learning_rate, check_square, is_real,
)
from ._losses import get_loss
from ._types import TrainTest, shape_outputs

WHERE = "gradient_descent"
#: Default solver tolerances (relative, absolute) by dtype: float64 near neural-tangents' 1.4e-8.
TOLERANCES = {torch.float64: (1e-8, 1e-10), torch.float32: (1e-5, 1e-7)}


def gradient_descent(
    loss,
    k_train_train: torch.Tensor,
    y_train: torch.Tensor,
    learning_rate: float = 1.0,
    momentum: float | None = None,
    method: str = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    options: dict | None = None,
) -> "ODEPredictor":
    """Outputs of a network trained by gradient descent on any differentiable loss, by an ODE.

    With a fixed kernel :math:`\\Theta` (infinite width, or a linearized network), gradient
    flow on a loss :math:`\\mathcal L(f(X), Y)` moves the outputs in function space (Jacot et
    al. 2018, eq. 5; Lee et al. 2019, eq. 7):

    .. math::
        \\dot f(X) = -\\eta\\, \\Theta(X, X)\\, \\nabla_f \\mathcal L, \\qquad
        \\dot f(x) = -\\eta\\, \\Theta(x, X)\\, \\nabla_f \\mathcal L.

    There is no closed form beyond the squared error, so the ODE is integrated by
    `torchdiffeq <https://github.com/rtqichen/torchdiffeq>`_ (adaptive Dormand-Prince by
    default). With ``momentum`` :math:`\\mu`, heavy-ball gradient descent becomes
    :math:`\\ddot f = -\\Theta \\nabla_f \\mathcal L - \\frac{1 - \\mu}{\\sqrt\\eta} \\dot f` in time
    units of :math:`\\sqrt\\eta` per step, starting at rest (neural-tangents' convention: there,
    unlike without momentum, :math:`\\eta` and :math:`t` are not interchangeable).

    Parameters
    ----------
    loss : "mse", "cross_entropy", or callable
        ``loss(f, y) -> scalar`` on outputs and targets shaped like ``y_train``; the names
        are the losses of :mod:`ntkit.predict._losses` (means over ``y.numel()`` terms, as in
        neural-tangents), and ``"mse"`` reproduces :func:`gradient_descent_mse`.
    k_train_train : Tensor, shape (n, n)
        The kernel between training inputs (its dtype and device are the computation's).
    y_train : Tensor, shape (n, outputs) or (n,)
    learning_rate : float
    momentum : float in [0, 1), optional
    method : str
        A torchdiffeq solver ("dopri5", "dopri8", "bosh3", "rk4", ...).
    rtol, atol : float, optional
        Solver tolerances; default 1e-8 and 1e-10 in float64, 1e-5 and 1e-7 in float32.
    options : dict, optional
        Passed to ``torchdiffeq.odeint`` (e.g. ``{"step_size": 0.1}`` for fixed-step methods).

    Returns
    -------
    ODEPredictor
        ``predictor(t, fx_train_0=0., fx_test_0=None, k_test_train=None)`` returns
        :class:`TrainTest` outputs at time(s) ``t`` (any order and shape; steps at learning
        rate :math:`\\eta`).

    Notes
    -----
    Each evaluation of the vector field costs one gradient of the loss and
    :math:`2 n (n + m) c` flops; an adaptive solver takes a number of evaluations that grows
    with :math:`\\eta t \\lambda_{max}` when the problem is stiff.

    References
    ----------
    Jacot et al., NeurIPS 2018; Lee et al., NeurIPS 2019; Chen et al., "Neural ordinary
    differential equations", NeurIPS 2018 (torchdiffeq).
    """
    if isinstance(k_train_train, Kernel):
        raise NtkitError(f"{WHERE}: k_train_train is an ntkit Kernel; pass one matrix, e.g. k.ntk")
    loss_fn = get_loss(loss, WHERE)
    k = as_matrix(k_train_train, "k_train_train", WHERE)
    check_square(k, "k_train_train", WHERE)
    y, was_1d = as_targets(y_train, k.shape[0], k, WHERE)
    if momentum is not None and (not is_real(momentum) or not 0 <= momentum < 1):
        raise NtkitError(f"{WHERE}: momentum must be a number in [0, 1) or None, got {momentum!r}")
    momentum = None if momentum is None else float(momentum)
    solvers = _solvers()
    if method not in solvers:
        raise NtkitError(f"{WHERE}: unknown method {method!r}; torchdiffeq offers {sorted(solvers)}")
    default_rtol, default_atol = TOLERANCES[k.dtype]
    return ODEPredictor(
        loss_fn, k, y, was_1d, check_learning_rate(learning_rate, WHERE), momentum, method,
        default_rtol if rtol is None else float(rtol), default_atol if atol is None else float(atol),
        dict(options or {}),
    )


class ODEPredictor:
    """The predictor returned by :func:`gradient_descent`; see there."""

    def __init__(self, loss, k, y, was_1d, learning_rate, momentum, method, rtol, atol, options):
        self.loss, self.k_train_train, self.y_train = loss, k, y
        self._was_1d = was_1d
        self.learning_rate, self.momentum = learning_rate, momentum
        self.method, self.rtol, self.atol, self.options = method, rtol, atol, options

    def __call__(self, t, fx_train_0=0.0, fx_test_0=None, k_test_train=None) -> TrainTest:
        """Train and test outputs at time(s) ``t``; arguments as for :func:`gradient_descent_mse`
        (``t`` must be finite: there is no closed form for the end of training)."""
        if t is None:
            raise NtkitError(
                f"{WHERE}: t=None (the end of training) has no closed form for a general loss; "
                "pass finite times (or use gradient_descent_mse for the squared error)"
            )
        k, y = self.k_train_train, self.y_train
        n, c = y.shape
        k_td = f_test_0 = None
        if k_test_train is not None:
            k_td = as_matrix(k_test_train, "k_test_train", WHERE, like=k)
            check_cross(k_td, n, "k_test_train", WHERE)
            f_test_0 = as_outputs(0.0 if fx_test_0 is None else fx_test_0, (k_td.shape[0], c), "fx_test_0", k, WHERE)
        elif fx_test_0 is not None:
            raise NtkitError(f"{WHERE}: fx_test_0 was given without k_test_train; pass both for test outputs")
        if fx_train_0 is None and k_td is None:
            raise NtkitError(f"{WHERE}: fx_train_0=None and no k_test_train: there is nothing to predict")
        f0 = as_outputs(0.0 if fx_train_0 is None else fx_train_0, (n, c), "fx_train_0", k, WHERE)
        times = as_times(t, k, WHERE)
        unique, inverse = torch.unique(times.flatten(), sorted=True, return_inverse=True)
        grid = unique if float(unique[0]) == 0 else torch.cat([unique.new_zeros(1), unique])
        offset = grid.shape[0] - unique.shape[0]
        scale = math.sqrt(self.learning_rate) if self.momentum is not None else self.learning_rate

        state = (f0,) if k_td is None else (f0, f_test_0)
        if self.momentum is not None:
            state = state + tuple(torch.zeros_like(s) for s in state)
        solution = _odeint()(
            self._field(k_td), state, grid * scale,
            method=self.method, rtol=self.rtol, atol=self.atol, options=self.options,
        )
        rows = inverse + offset
        train = None if fx_train_0 is None else solution[0][rows]
        test = None if k_td is None else solution[1][rows]
        shape = tuple(times.shape)
        return TrainTest(shape_outputs(train, shape, self._was_1d), shape_outputs(test, shape, self._was_1d))

    def _field(self, k_td):
        """The vector field of the ODE state ``(f_train[, f_test][, q_train[, q_test]])``."""
        k, y, loss = self.k_train_train, self.y_train, self.loss
        view = (lambda f: f[:, 0]) if self._was_1d else (lambda f: f)
        has_test = k_td is not None
        friction = None if self.momentum is None else (self.momentum - 1) / math.sqrt(self.learning_rate)

        def gradient(f):
            with torch.enable_grad():
                f = f.detach().requires_grad_(True)
                value = loss(view(f), view(y))
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise NtkitError(f"{WHERE}: loss(f, y) must return a scalar tensor, got {value!r}")
                (grad,) = torch.autograd.grad(value.reshape(()), f)
            return grad

        def field(s, state):
            outputs = state[: 1 + has_test]
            grad = gradient(outputs[0])
            force = (-(k @ grad),) + ((-(k_td @ grad),) if has_test else ())
            if friction is None:
                return force
            velocities = state[1 + has_test:]
            return velocities + tuple(a + friction * v for a, v in zip(force, velocities))

        return field


def _solvers():
    """torchdiffeq's registry of solver names (its ``SOLVERS`` dict)."""
    _torchdiffeq()
    return importlib.import_module("torchdiffeq._impl.odeint").SOLVERS


def _odeint():
    return _torchdiffeq().odeint


def _torchdiffeq():
    try:
        import torchdiffeq
    except ImportError as error:  # a declared dependency: only a broken install lacks it
        raise ImportError("ntkit.predict.gradient_descent needs torchdiffeq: pip install torchdiffeq") from error
    return torchdiffeq
