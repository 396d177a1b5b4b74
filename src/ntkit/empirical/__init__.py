"""The finite network: empirical kernels of any ``torch.nn.Module``, its linearization and
Taylor expansion in the parameters, and Monte Carlo estimates of an ntkit network's kernels.

- :func:`empirical_ntk`, :func:`empirical_nngp`: kernels of a network at its parameters, for
  any module; ``IMPLEMENTATIONS`` holds the NTK's implementations by name (one file each:
  ``_jacobian_contraction``, ``_ntk_vector_products``, ``_structured``; ``"auto"`` chooses by
  the rule in ``_registry``).
- :func:`linearize`, :func:`taylor_expand`: trainable modules, expanded around the current
  parameters with forward-mode JVPs.
- :func:`monte_carlo_kernel`: averages over sampled initializations, with standard errors.
"""

from ._linearize import Linearized, linearize
from ._monte_carlo import MonteCarloKernel, monte_carlo_kernel
from ._nngp import empirical_nngp
from ._ntk import EmpiricalNtkFn, empirical_ntk, empirical_ntk_fn
from ._registry import IMPLEMENTATIONS
from ._taylor import TaylorExpanded, taylor_expand

__all__ = [
    "IMPLEMENTATIONS", "EmpiricalNtkFn", "Linearized", "MonteCarloKernel", "TaylorExpanded",
    "empirical_nngp", "empirical_ntk", "empirical_ntk_fn", "linearize", "monte_carlo_kernel",
    "taylor_expand",
]
