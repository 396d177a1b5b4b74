"""Combinators: compose layers in series, in parallel, and split and merge branches."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._errors import NtkitError, located
from .._inputs import Inputs
from ..kernel import Kernel
from ._base import Kernels, Layer, branches, single
from ._fusion import fused_inputs_map, fused_map


class Serial(Layer):
    """Layers applied one after the other, in both faces (``serial(*layers)``)."""

    diagonal_layout = True

    _names_children = True

    def __init__(self, *layers: Layer):
        super().__init__()
        _check_layers(layers, "serial")
        self.layers = nn.ModuleList(layers)

    @property
    def name(self) -> str:
        return "serial"

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            with located(f"serial[{index}] ({layer.name})"):
                x = layer(x)
        return x

    def kernel_map(self, k: Kernels) -> Kernels:
        return self._map_from(0, k)

    def map_inputs(self, inputs: Inputs) -> Kernels:
        """The first layer maps the raw inputs (see ``Layer.map_inputs``; a fused run of layers
        starting with a Conv, ``_fusion``), the others its kernel."""
        fused = fused_inputs_map(self.layers, inputs)
        if fused is not None:
            return self._map_from(fused[1], fused[0])
        with located(f"serial[0] ({self.layers[0].name})"):
            k = self.layers[0].map_inputs(inputs)
        return self._map_from(1, k)

    def _map_from(self, start: int, k: Kernels) -> Kernels:
        """The layers from ``start`` on; runs of layers that can share one pass over the block
        (a Conv, its ReLU and a pooling: ``_fusion``) take it."""
        index = start
        while index < len(self.layers):
            fused = fused_map(self.layers, index, k)
            if fused is not None:
                k, count = fused
                index += count
                continue
            layer = self.layers[index]
            with located(f"serial[{index}] ({layer.name})"):
                k = layer.kernel_map(k)
            index += 1
        return k

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)


class Parallel(Layer):
    """One layer per branch: branch i of the input goes through ``layers[i]`` (``parallel(*layers)``)."""

    diagonal_layout = True

    _names_children = True

    def __init__(self, *layers: Layer):
        super().__init__()
        _check_layers(layers, "parallel")
        self.layers = nn.ModuleList(layers)

    @property
    def name(self) -> str:
        return "parallel"

    def forward(self, xs):
        out = []
        for index, (layer, x) in enumerate(zip(self.layers, self._split(xs, "inputs"))):
            with located(f"parallel[{index}] ({layer.name})"):
                out.append(layer(x))
        return out

    def kernel_map(self, k: Kernels) -> list[Kernel]:
        out = []
        for index, (layer, branch) in enumerate(zip(self.layers, self._split(k, "kernels"))):
            with located(f"parallel[{index}] ({layer.name})"):
                out.append(layer.kernel_map(branch))
        return out

    def _split(self, xs, what: str) -> Sequence:
        if isinstance(xs, (Kernel, torch.Tensor)) or len(xs) != len(self.layers):
            got = 1 if isinstance(xs, (Kernel, torch.Tensor)) else len(xs)
            raise NtkitError(
                f"a parallel of {len(self.layers)} layers received {got} {what} (use FanOut first)"
            )
        return xs


class FanOut(Layer):
    """Copy the input into ``n`` branches."""

    diagonal_layout = True

    def __init__(self, n: int):
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise NtkitError(f"FanOut: n must be a positive integer, got {n!r}")
        self.n = n

    def forward(self, x):
        return [x] * self.n

    def kernel_map(self, k: Kernels) -> list[Kernel]:
        return [single(k, "FanOut")] * self.n

    def extra_repr(self) -> str:
        return f"n={self.n}"


class FanInSum(Layer):
    """Sum the branches. The second moment of a sum is the sum of the branches' kernels plus
    their cross moments, which vanish when, for every pair of branches, the two are drawn from
    different random layers (disjoint ``Kernel.sources``: each branch but one has its own
    ``Dense`` or ``Conv`` since the ``FanOut``) and one of them has mean zero (``centred``:
    ends in such a layer, not in an activation). Kernels then add (Novak et al. 2020,
    ``stax.FanInSum``), and the sum of Gaussians is Gaussian; other sums (two ``Identity``
    branches, or a ReLU branch added to a post-activation shortcut) are refused."""

    diagonal_layout = True

    def forward(self, xs):
        _check_branch_shapes(xs)
        return torch.stack(list(xs)).sum(0)

    def kernel_map(self, k: Kernels) -> Kernel:
        ks = branches(k, "FanInSum")
        _check_feature_shapes(ks, "FanInSum", axis=None)
        _check_independent(ks, need_centred=True)
        return ks[0].replace(
            nngp=_sum(x.nngp for x in ks),
            ntk=None if ks[0].ntk is None else _sum(x.ntk for x in ks),
            var1=_sum(x.var1 for x in ks),
            var2=_sum(x.var2 for x in ks),
            is_gaussian=all(x.is_gaussian for x in ks),
            centred=all(x.centred for x in ks),
            sources=frozenset().union(*(x.sources for x in ks)),
        )


class FanInConcat(Layer):
    """Concatenate the branches along the feature axis.

    The per-unit kernel of the concatenation is the width-weighted average of the branches'
    kernels, :math:`K = \\sum_b (n_b / n) K_b` (Novak et al. 2020, ``stax.FanInConcat``): exact
    for what a following ``Dense`` sums over units. The units are no longer identically
    distributed (a unit of branch b has kernel :math:`K_b`), so the output counts as
    non-Gaussian: a nonlinearity applied to the averaged kernel would be wrong, and needs a
    ``Dense`` after the concatenation.
    """

    diagonal_layout = True

    def forward(self, xs):
        _check_branch_shapes(xs, axis=1)
        return torch.cat(list(xs), dim=1)

    def kernel_map(self, k: Kernels) -> Kernel:
        ks = branches(k, "FanInConcat")
        _check_feature_shapes(ks, "FanInConcat", axis=0)
        widths = [x.feature_shape[0] for x in ks]
        total = sum(widths)
        weights = [w / total for w in widths]

        def mix(name):
            return _sum(getattr(x, name) * w for x, w in zip(ks, weights))

        return ks[0].replace(
            nngp=mix("nngp"),
            ntk=None if ks[0].ntk is None else mix("ntk"),
            var1=mix("var1"),
            var2=mix("var2"),
            feature_shape=(total,) + tuple(ks[0].feature_shape[1:]),
            is_gaussian=len(ks) == 1 and ks[0].is_gaussian,
            centred=all(x.centred for x in ks),
            sources=frozenset().union(*(x.sources for x in ks)),
        )


class FanInProd(Layer):
    """Multiply the branches elementwise.

    For independent branches (drawn from different random layers: disjoint ``Kernel.sources``;
    others are refused), :math:`K = \\prod_b K_b` and, by the
    product rule, :math:`\\Theta = \\sum_b \\Theta_b \\prod_{c \\ne b} K_c` (Novak et al. 2020,
    ``stax.FanInProd``). A product of Gaussians is not Gaussian.
    """

    diagonal_layout = True

    def forward(self, xs):
        _check_branch_shapes(xs)
        return torch.stack(list(xs)).prod(0)

    def kernel_map(self, k: Kernels) -> Kernel:
        ks = branches(k, "FanInProd")
        _check_feature_shapes(ks, "FanInProd", axis=None)
        _check_independent(ks, need_centred=False)
        ntk = None
        if ks[0].ntk is not None:
            ntk = _sum(
                math.prod((x.ntk if c == b else x.nngp for c, x in enumerate(ks)), start=1)
                for b in range(len(ks))
            )
        return ks[0].replace(
            nngp=math.prod((x.nngp for x in ks), start=1),
            ntk=ntk,
            var1=math.prod((x.var1 for x in ks), start=1),
            var2=math.prod((x.var2 for x in ks), start=1),
            is_gaussian=len(ks) == 1 and ks[0].is_gaussian,
            centred=any(x.centred for x in ks),  # a product of independent factors, one of mean zero
            sources=frozenset().union(*(x.sources for x in ks)),
        )


def serial(*layers: Layer) -> Serial:
    """Compose layers in series: ``serial(Dense(512), ReLU(), Dense(1))``."""
    return Serial(*layers)


def parallel(*layers: Layer) -> Parallel:
    """Apply ``layers[i]`` to branch i: ``serial(FanOut(2), parallel(block, Identity()), FanInSum())``."""
    return Parallel(*layers)


def _sum(tensors):
    tensors = iter(tensors)
    total = next(tensors).clone()
    for t in tensors:
        total += t
    return total


def _check_layers(layers, combinator: str) -> None:
    if not layers:
        raise NtkitError(f"{combinator}() needs at least one layer")
    for index, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise NtkitError(
                f"{combinator}[{index}] is {type(layer).__name__}, not an ntkit layer "
                "(wrap an elementwise function in ntkit.Elementwise)"
            )


def _check_branch_shapes(xs, axis: int | None = None) -> None:
    if isinstance(xs, torch.Tensor) or len(xs) < 1:
        raise NtkitError("expects a list of branches (use FanOut first)")
    shapes = [tuple(x.shape) for x in xs]
    keep = [tuple(s[:axis] + s[axis + 1 :]) if axis is not None else s for s in shapes]
    if len(set(keep)) > 1:
        raise NtkitError(f"branches have incompatible shapes {shapes}")


def _check_independent(ks: list[Kernel], need_centred: bool) -> None:
    """Refuse branches whose kernels do not combine: two drawn from the same random layer (or
    both from the inputs), or, for a sum, two of nonzero mean (their means' product adds)."""
    for i, a in enumerate(ks):
        for j in range(i + 1, len(ks)):
            b = ks[j]
            shared = a.sources & b.sources
            if shared:
                origin = "the inputs" if shared == {"inputs"} else "the same random layer"
                raise NtkitError(
                    f"branches {i} and {j} are correlated: both are drawn from {origin} (neither has a "
                    f"Dense or Conv of its own since the FanOut), so their kernels do not "
                    f"{'add' if need_centred else 'multiply'}; give one of them a Dense or Conv"
                )
            if need_centred and not (a.centred or b.centred):
                raise NtkitError(
                    f"branches {i} and {j} both have nonzero mean (they end in an activation or are the "
                    "inputs), so the product of their means adds to the sum's kernel; end one of them in "
                    "a Dense or Conv"
                )


def _check_feature_shapes(ks: list[Kernel], layer: str, axis: int | None) -> None:
    shapes = [x.feature_shape for x in ks]
    keep = [s[:axis] + s[axis + 1 :] if axis is not None else s for s in shapes]
    if len(set(keep)) > 1:
        raise NtkitError(f"branches have incompatible feature shapes {shapes}")
    if len({x.ntk is None for x in ks}) > 1:
        raise NtkitError("some branches carry an NTK and others do not")

