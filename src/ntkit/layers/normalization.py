"""LayerNorm over the features of each example."""

from __future__ import annotations

import torch

from .._errors import NtkitError
from ..kernel import Kernel
from ._base import Kernels, Layer, single


class LayerNorm(Layer):
    """Normalise each example over its features: :math:`(x - \\bar x) / \\sqrt{\\mathrm{var}(x) + \\epsilon}`.

    No learned scale or shift (as neural-tangents ``LayerNorm``). At infinite width the
    feature mean of i.i.d. centred units vanishes and their empirical variance is the
    kernel's :math:`v(x)`, so (Novak et al. 2020, ``stax.LayerNorm``; Xiao et al. 2020)

    .. math::
        K'(x, x') = \\frac{K(x, x')}{\\sqrt{(v_1 + \\epsilon)(v_2 + \\epsilon)}}, \\qquad
        \\Theta'(x, x') = \\frac{\\Theta(x, x')}{\\sqrt{(v_1 + \\epsilon)(v_2 + \\epsilon)}},

    the gradient through the normaliser being a rank-one projection, negligible at infinite
    width. Gaussian inputs stay Gaussian.

    Parameters
    ----------
    eps : float
        Added to the variance. The default 0 normalises exactly; an example whose features
        are all zero then has no direction, and ``kernel`` raises.
    """

    def __init__(self, eps: float = 0.0):
        super().__init__()
        if not isinstance(eps, (int, float)) or eps < 0:
            raise NtkitError(f"LayerNorm: eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2:
            raise NtkitError(f"input has shape {tuple(x.shape)}; expected (N, features)")
        return torch.nn.functional.layer_norm(x, x.shape[1:], eps=self.eps)

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "LayerNorm")
        if len(k.feature_shape) != 1:
            raise NtkitError(f"features of shape {k.feature_shape}: only fully-connected kernels are supported")
        for argument, var in (("x1", k.var1), ("x2", k.var2)):
            if self.eps == 0 and bool((var <= 0).any()):
                raise NtkitError(
                    f"its input is a zero vector (variance 0) for an example of {argument}, which "
                    "cannot be normalised; pass LayerNorm(eps=...) > 0 or remove that example"
                )
        scale1, scale2 = k.map_variances(lambda v: (v + self.eps).rsqrt())
        outer = scale1[:, None] * scale2[None, :]
        var1, var2 = k.map_variances(lambda v: v / (v + self.eps))
        nngp = k.nngp * outer
        if k.same_inputs:
            nngp.diagonal().copy_(var1)
        return k.replace(
            nngp=nngp,
            ntk=None if k.ntk is None else k.ntk * outer,
            var1=var1,
            var2=var2,
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"
