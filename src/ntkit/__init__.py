"""ntkit: wide neural networks and their infinite-width kernels, for PyTorch."""

from . import finite_width, predict
from ._errors import NtkitError
from .empirical import empirical_nngp, empirical_ntk, empirical_ntk_fn, linearize, monte_carlo_kernel, taylor_expand
from .kernel import Kernel
from .layers import (
    GELU, ABReLU, Abs, Activation, AvgPool, Conv, ConvLocal, Cos, Dense, Dropout, Elementwise, Erf, Exp,
    FanInConcat, FanInProd, FanInSum, FanOut, Flatten, Gaussian, GlobalAvgPool, GlobalSumPool,
    Hermite, Identity, Layer, LayerNorm, LeakyReLU, Monomial, Parallel, Polynomial, Rbf,
    RectifiedMonomial, ReLU, Serial, Sigmoid, Sign, Sin, Softplus, SumPool, Tanh, parallel,
    serial,
)

__version__ = "0.1.0"

__all__ = [
    "ABReLU", "Abs", "Activation", "AvgPool", "Conv", "ConvLocal", "Cos", "Dense", "Dropout", "Elementwise",
    "Erf", "Exp", "FanInConcat", "FanInProd", "FanInSum", "FanOut", "Flatten", "GELU",
    "Gaussian", "GlobalAvgPool", "GlobalSumPool", "Hermite", "Identity", "Kernel", "Layer",
    "LayerNorm", "LeakyReLU", "Monomial", "NtkitError", "Parallel", "Polynomial", "Rbf", "ReLU",
    "RectifiedMonomial", "Serial", "Sigmoid", "Sign", "Sin", "Softplus", "SumPool", "Tanh",
    "empirical_nngp", "empirical_ntk", "empirical_ntk_fn", "finite_width", "linearize", "monte_carlo_kernel", "parallel", "predict",
    "serial", "taylor_expand",
]
