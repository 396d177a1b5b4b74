"""ntkit: wide neural networks and their infinite-width kernels, for PyTorch."""

from . import predict
from ._errors import NtkitError
from .empirical import empirical_nngp, empirical_ntk, linearize, monte_carlo_kernel, taylor_expand
from .kernel import Kernel
from .layers import (
    GELU, ABReLU, Abs, Activation, Cos, Dense, Dropout, Elementwise, Erf, Exp, FanInConcat,
    FanInProd, FanInSum, FanOut, Flatten, Gaussian, Hermite, Identity, Layer, LayerNorm,
    LeakyReLU, Monomial, Parallel, Polynomial, Rbf, RectifiedMonomial, ReLU, Serial, Sigmoid,
    Sign, Sin, Softplus, Tanh, parallel, serial,
)

__version__ = "0.1.0"

__all__ = [
    "ABReLU", "Abs", "Activation", "Cos", "Dense", "Dropout", "Elementwise", "Erf", "Exp",
    "FanInConcat", "FanInProd", "FanInSum", "FanOut", "Flatten", "GELU", "Gaussian", "Hermite",
    "Identity", "Kernel", "Layer", "LayerNorm", "LeakyReLU", "Monomial", "NtkitError",
    "Parallel", "Polynomial", "Rbf", "RectifiedMonomial", "ReLU", "Serial", "Sigmoid", "Sign",
    "Sin", "Softplus", "Tanh", "empirical_nngp", "empirical_ntk", "linearize", "monte_carlo_kernel",
    "parallel", "predict", "serial", "taylor_expand",
]
