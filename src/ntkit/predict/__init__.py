"""Training dynamics of wide networks in closed form, and Gaussian-process inference.

The functions follow neural-tangents' ``nt.predict`` so that results can be compared: the loss
is :math:`\\lVert f - y\\rVert^2 / (2\\, y.\\mathrm{numel}())`, times are in units of the
learning rate, and ``diag_reg`` is relative to the mean of the kernel's diagonal. Kernels are
per output unit, (N1, N2); computations follow the dtype and device of the kernels (float64
unless asked otherwise).

- :func:`gradient_descent_mse`: one network's outputs from given kernels and initial outputs.
- :func:`gradient_descent_mse_ensemble`: mean and covariance over initializations, from a network.
- :func:`gp_inference`: NNGP posterior, NTK ensemble at convergence, NTK-GP posterior.
- :func:`gradient_descent`: any differentiable loss (cross-entropy, ...), by an ODE solver.
- :func:`max_learning_rate`: the stability limit of discrete gradient descent.
"""

from ._ensemble import EnsemblePredictor, gradient_descent_mse_ensemble
from ._gp import GPPredictor, gp_inference
from ._learning_rate import max_learning_rate
from ._losses import LOSSES
from ._mse import MSEPredictor, gradient_descent_mse
from ._ode import ODEPredictor, gradient_descent
from ._types import Gaussian, TrainTest

__all__ = [
    "LOSSES", "EnsemblePredictor", "GPPredictor", "Gaussian", "MSEPredictor", "ODEPredictor",
    "TrainTest", "gp_inference", "gradient_descent", "gradient_descent_mse",
    "gradient_descent_mse_ensemble", "max_learning_rate",
]
