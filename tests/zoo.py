"""Every layer and several whole networks, with sane arguments: the contract tests run on all.

Each entry builds a network that starts with an affine layer and ends in a wide one, so that
the Monte Carlo check can sample it as it is (``check_layer(..., wrap=False)``). ``accuracy`` is
the kernel map's own stated relative accuracy (quadrature), 0 for closed forms.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

import ntkit as nk

WIDTH = 512


class Entry(NamedTuple):
    name: str
    build: Callable[[], nk.Layer]
    accuracy: float = 0.0


def dense(width: int = WIDTH, **options) -> nk.Dense:
    options.setdefault("W_std", 1.3)
    options.setdefault("b_std", 0.2)
    return nk.Dense(width, **options)


def around(*layers: nk.Layer) -> nk.Layer:
    """``layers`` between an affine input layer and a wide affine readout."""
    return nk.serial(dense(), *layers, dense(W_std=1.1, b_std=0.1))


# Quadrature's stated accuracy (see Elementwise's docstring): relative 1e-12 for tanh-like
# functions at these variances; 1e-10 leaves room and still catches a wrong formula.
QUADRATURE = 1e-10

ACTIVATIONS = [
    Entry("ReLU", lambda: around(nk.ReLU())),
    Entry("LeakyReLU", lambda: around(nk.LeakyReLU(0.2))),
    Entry("ABReLU", lambda: around(nk.ABReLU(-0.4, 1.3))),
    Entry("Abs", lambda: around(nk.Abs())),
    Entry("Sign", lambda: around(nk.Sign())),
    Entry("Erf", lambda: around(nk.Erf(1.2, 0.8, 0.1))),
    Entry("GELU", lambda: around(nk.GELU())),
    Entry("Sin", lambda: around(nk.Sin(1.1, 0.9, 0.3))),
    Entry("Cos", lambda: around(nk.Cos(0.9, 1.2, -0.4))),
    Entry("Rbf", lambda: around(nk.Rbf(0.6))),
    Entry("Exp", lambda: around(nk.Exp(0.6, 0.5))),
    Entry("Gaussian", lambda: around(nk.Gaussian(1.2, -0.7))),
    Entry("Monomial", lambda: around(nk.Monomial(2))),
    Entry("RectifiedMonomial", lambda: around(nk.RectifiedMonomial(2))),
    Entry("Polynomial", lambda: around(nk.Polynomial([0.1, -0.5, 0.3, 0.2]))),
    Entry("Hermite", lambda: around(nk.Hermite(3))),
    Entry("Tanh", lambda: around(nk.Tanh()), QUADRATURE),
    Entry("Sigmoid", lambda: around(nk.Sigmoid()), QUADRATURE),
    Entry("Softplus", lambda: around(nk.Softplus()), QUADRATURE),
    Entry("Elementwise(sin)", lambda: around(nk.Elementwise(torch.sin)), QUADRATURE),
]


def _residual_block() -> nk.Layer:
    block = nk.serial(nk.ReLU(), dense())
    return nk.serial(nk.FanOut(2), nk.parallel(block, nk.Identity()), nk.FanInSum())


OTHER_LAYERS = [
    Entry("Dense(no bias)", lambda: around(nk.ReLU(), dense(b_std=None))),
    Entry(
        "Dense(standard)",
        lambda: nk.serial(
            dense(parameterization="standard"), nk.ReLU(), dense(W_std=1.1, b_std=0.1, parameterization="standard")
        ),
    ),
    Entry("Identity", lambda: around(nk.Identity(), nk.ReLU())),
    Entry("Flatten", lambda: around(nk.Flatten(), nk.Erf())),
    Entry("LayerNorm", lambda: around(nk.LayerNorm(), nk.ReLU())),
    Entry("LayerNorm(eps)", lambda: around(nk.LayerNorm(eps=0.5), nk.Erf())),
    Entry("Dropout", lambda: around(nk.ReLU(), nk.Dropout(0.3), dense(), nk.Erf())),
    Entry("Residual", lambda: around(_residual_block(), _residual_block(), nk.ReLU())),
    Entry(
        "FanInConcat",
        lambda: around(
            nk.FanOut(3),
            nk.parallel(nk.serial(nk.ReLU(), dense(256)), nk.Identity(), nk.serial(nk.Erf(), dense(128))),
            nk.FanInConcat(),
            dense(),
            nk.GELU(),
        ),
    ),
    Entry(
        "FanInProd",
        lambda: around(
            nk.FanOut(2), nk.parallel(nk.serial(nk.ReLU(), dense()), nk.serial(nk.Erf(), dense())), nk.FanInProd()
        ),
    ),
    Entry("Deep ReLU (4)", lambda: around(*[layer for _ in range(3) for layer in (nk.ReLU(), dense())], nk.ReLU())),
]

ZOO = ACTIVATIONS + OTHER_LAYERS

# Deep networks: algebra and float32 at depth 20 (the Monte Carlo check at depth 20 is slow).
DEEP = [
    Entry("Deep ReLU (20)", lambda: around(*[layer for _ in range(19) for layer in (nk.ReLU(), dense(W_std=1.4, b_std=0.1))], nk.ReLU())),
    Entry("Deep Erf (20)", lambda: around(*[layer for _ in range(19) for layer in (nk.Erf(), dense())], nk.Erf())),
    Entry("Deep residual (10 blocks)", lambda: around(*[_residual_block() for _ in range(10)])),
]


def inputs(seed: int = 0, n: int = 5, d: int = 4) -> torch.Tensor:
    """n random examples in d dimensions, the last one a copy of the first (correlation 1)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[-1] = x[0]
    return x
