"""ntkit's layers: each a torch module with an infinite-width kernel map."""

from ._base import Layer
from .activation import Activation
from .combinators import FanInConcat, FanInProd, FanInSum, FanOut, Parallel, Serial, parallel, serial
from .conv import Conv
from .conv_local import ConvLocal
from .dense import Dense
from .dropout import Dropout
from .elementwise import Elementwise, Sigmoid, Softplus, Tanh
from .erf import GELU, Erf
from .exponential import Exp, Gaussian
from .normalization import LayerNorm
from .pooling import AvgPool, GlobalAvgPool, GlobalSumPool, SumPool
from .polynomial import Hermite, Monomial, Polynomial
from .rectified import ABReLU, Abs, LeakyReLU, RectifiedMonomial, ReLU, Sign
from .shape import Flatten, Identity
from .trigonometric import Cos, Rbf, Sin

__all__ = [
    "ABReLU", "Abs", "Activation", "AvgPool", "Conv", "ConvLocal", "Cos", "Dense", "Dropout", "Elementwise",
    "Erf", "Exp", "FanInConcat", "FanInProd", "FanInSum", "FanOut", "Flatten", "GELU",
    "Gaussian", "GlobalAvgPool", "GlobalSumPool", "Hermite", "Identity", "Layer", "LayerNorm",
    "LeakyReLU", "Monomial", "Parallel", "Polynomial", "Rbf", "ReLU", "RectifiedMonomial",
    "Serial", "Sigmoid", "Sign", "Sin", "Softplus", "SumPool", "Tanh", "parallel", "serial",
]
