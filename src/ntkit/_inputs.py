"""Checks on the inputs of ``kernel``, and the kernel of the inputs themselves."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._errors import NtkitError
from .kernel import Kernel

FLOAT_DTYPES = (torch.float64, torch.float32)


def as_batch(
    x, argument: str, dtype: torch.dtype, device: torch.device | None, spatial: bool = False
) -> torch.Tensor:
    """``x`` as a finite tensor of ``dtype``, or an NtkitError saying what is wrong.

    Vectors ``(N, features)`` always; with ``spatial`` (a network with convolutions or pooling)
    also sequences ``(N, C, L)`` and images ``(N, C, H, W)``.
    """
    if dtype not in FLOAT_DTYPES:
        raise NtkitError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    x = torch.as_tensor(x)
    if spatial and x.ndim not in (2, 3, 4):
        raise NtkitError(
            f"{argument} has shape {tuple(x.shape)}; expected (N, features), (N, C, L) or (N, C, H, W)"
        )
    if not spatial and x.ndim != 2:
        hint = (
            " (kernels of image or sequence inputs need convolutional layers; flatten x to "
            "(N, features) for a fully-connected network)"
            if x.ndim > 2
            else ""
        )
        raise NtkitError(f"{argument} has shape {tuple(x.shape)}; expected (N, features){hint}")
    if 0 in x.shape:
        what = "one feature" if x.ndim == 2 else "one channel and position"
        raise NtkitError(f"{argument} has shape {tuple(x.shape)}; it needs at least one example and {what}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.bool)):
        raise NtkitError(f"{argument} has dtype {x.dtype}; expected a real tensor")
    x = x.to(dtype=dtype, device=device)
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise NtkitError(f"{argument} contains NaN or inf (first in row {row})")
    return x


def check_inputs(x1, x2, dtype: torch.dtype, spatial: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validated ``(x1, x2, same_inputs)``: x2 None or ``x2 is x1`` means the same examples.

    ``spatial`` allows image and sequence inputs (NCHW, NCL), for networks that have layers
    with a spatial kernel map.
    """
    same = x2 is None or x2 is x1
    device = x1.device if isinstance(x1, torch.Tensor) else None
    x1 = as_batch(x1, "x1", dtype, device, spatial)
    if same:
        return x1, x1, True
    x2 = as_batch(x2, "x2", dtype, x1.device, spatial)
    shapes = f"(shapes {tuple(x1.shape)} and {tuple(x2.shape)})"
    if x1.ndim != x2.ndim:
        raise NtkitError(f"x1 and x2 have different ranks {shapes}")
    if x2.shape[1] != x1.shape[1]:
        what = "features per example" if x1.ndim == 2 else "channels (axis 1)"
        hint = ""
        if x1.ndim > 2 and x1.shape[-1] != x2.shape[-1] and min(x1.shape[-1], x2.shape[-1]) <= 4:
            hint = " (does one of them hold channels last, NHWC/NLC? ntkit expects NCHW/NCL)"
        raise NtkitError(f"x1 has {x1.shape[1]} {what} but x2 has {x2.shape[1]} {shapes}{hint}")
    if x1.shape[2:] != x2.shape[2:]:
        raise NtkitError(f"x1 and x2 have different spatial shapes {shapes}; they must be the same")
    return x1, x2, False


class Twins(NamedTuple):
    """Examples that are the same point up to sign: ``x_i = s_i s_j x'_j`` when ``group`` agrees.

    ``group1``, ``group2`` (int64, shapes (N1,), (N2,)) label each example's line through the
    origin, -1 for an example with no twin; ``sign1``, ``sign2`` hold the sign of its first
    nonzero feature. None stands for "no two examples share a line", the common case, which costs
    nothing further.
    """

    group1: torch.Tensor
    sign1: torch.Tensor
    group2: torch.Tensor
    sign2: torch.Tensor

    def block(self, rows: slice, cols: slice) -> "Twins":
        return Twins(self.group1[rows], self.sign1[rows], self.group2[cols], self.sign2[cols])

    def exact(self, nngp: torch.Tensor, var1: torch.Tensor) -> torch.Tensor:
        """``nngp`` (N1, N2, ...) of a linear map of the inputs, with the twins' pairs set to
        exactly +-``var1`` (N1, ...), the variances of their example in the first batch."""
        trailing = (1,) * (nngp.ndim - 2)
        pairs = (self.group1[:, None] == self.group2[None, :]) & (self.group1[:, None] >= 0)
        signed = (self.sign1[:, None] * self.sign2[None, :]).reshape(*pairs.shape, *trailing) * var1[:, None]
        return torch.where(pairs.reshape(*pairs.shape, *trailing), signed, nngp)


class Inputs(NamedTuple):
    """One block of raw inputs on their way into a network's first layer (``Layer.map_inputs``).

    Most layers map the inputs' kernel, ``kernel()``; a first layer that is cheaper to compute
    from the inputs themselves (``Conv``: dot products of image patches) reads them here.
    ``twins`` (from :func:`find_twins`) marks identical and antipodal pairs, ``spatial_layout``
    is the layout the engine chose (see :attr:`ntkit.Kernel.spatial_layout`)."""

    x1: torch.Tensor
    x2: torch.Tensor
    same_inputs: bool
    with_ntk: bool
    twins: Twins | None
    spatial_layout: str

    def kernel(self) -> Kernel:
        """The kernel of the inputs, :func:`input_kernel`."""
        return input_kernel(*self)


def find_twins(x1: torch.Tensor, x2: torch.Tensor, same_inputs: bool) -> Twins | None:
    """Identical or antipodal examples, found exactly (bit patterns).

    Their input correlation is exactly +1 or -1, but a matrix product rounds ``x_i . x_j``
    differently from ``|x_i|^2``: a correlation of 1 - eps would become an error of
    sqrt(2 eps) in every arc-cosine kernel after it (the square-root singularity of arccos at
    1). ``input_kernel`` therefore writes these pairs' covariances as exactly +-variance, and
    every kernel map computes a pair at correlation +-1 with the same operations as a variance.

    Cost: one norm per example, O((N1 + N2) d); only examples whose norm is shared by another
    are then compared feature by feature.
    """
    x = (x1 if same_inputs else torch.cat([x1, x2])).flatten(1)
    norms = torch.linalg.vector_norm(x, dim=1)
    _, shared, counts = torch.unique(norms, return_inverse=True, return_counts=True)
    candidates = ((counts[shared] > 1) & (norms > 0)).nonzero()[:, 0]
    if len(candidates) == 0:
        return None
    rows = x[candidates]
    first = (rows != 0).to(torch.uint8).argmax(dim=1)
    row_sign = torch.sign(rows.gather(1, first[:, None]))[:, 0]
    canonical = (rows * row_sign[:, None]).add_(0.0)  # + 0.0 turns -0.0 into +0.0
    _, row_group, members = torch.unique(canonical, dim=0, return_inverse=True, return_counts=True)
    paired = members[row_group] > 1  # equal norms alone do not make twins
    if not bool(paired.any()):
        return None
    candidates, row_group, row_sign = candidates[paired], row_group[paired], row_sign[paired]
    group = torch.full((len(x),), -1, dtype=torch.int64, device=x.device)
    sign = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    group[candidates], sign[candidates] = row_group, row_sign
    n1 = x1.shape[0]
    if same_inputs:
        return Twins(group, sign, group, sign)
    return Twins(group[:n1], sign[:n1], group[n1:], sign[n1:])


def input_kernel(
    x1: torch.Tensor,
    x2: torch.Tensor,
    same_inputs: bool,
    with_ntk: bool,
    twins: Twins | None = None,
    spatial_layout: str = "full",
) -> Kernel:
    """The kernel of the raw inputs: :math:`K(x, x') = x \\cdot x' / d`, no NTK yet.

    Dividing by the number of features ``d`` is the convention of Lee et al. 2018 (eq. 4) and
    neural-tangents, so that a following ``Dense`` has weight variance ``W_std**2 / d``.
    For images ``(N, C, *S)`` the kernel is per pair of positions and averaged over channels,
    :math:`K(x, x')[p, p'] = \\sum_c x_c(p)\\, x'_c(p') / C` (Novak et al. 2019, eq. 6; as
    neural-tangents), with shape ``(N1, N2, *S, *S)``; in the ``"diagonal"`` layout only the
    entries p = p', with shape ``(N1, N2, *S)`` (see :attr:`ntkit.Kernel.spatial_layout`).
    ``twins`` (from :func:`find_twins`) marks identical and antipodal pairs, whose entries are
    then exactly +-variance.
    """
    if x1.ndim > 2 and spatial_layout == "diagonal":
        return _diagonal_input_kernel(x1, x2, same_inputs, with_ntk, twins)
    if x1.ndim > 2:
        return _spatial_input_kernel(x1, x2, same_inputs, with_ntk, twins)
    features = x1.shape[1]
    nngp = torch.mm(x1, x2.T).div_(features)

    def variances(x):
        return torch.linalg.vector_norm(x, dim=1).square_().div_(features)

    return _input_kernel(nngp, variances, x1, x2, same_inputs, with_ntk, twins, "full")


def _input_kernel(nngp, variances, x1, x2, same_inputs, with_ntk, twins, spatial_layout) -> Kernel:
    """The Kernel of the inputs from their cross products ``nngp`` (N1, N2, ...) and
    ``variances(x)`` (N, ...): exact self-products for same inputs, exactly +-variance for twins."""
    var1 = variances(x1)
    if same_inputs:
        var2 = var1
        index = torch.arange(x1.shape[0], device=x1.device)
        nngp[index, index] = var1  # the exact self-products, whatever the matmul's rounding
    else:
        var2 = variances(x2)
    if twins is not None:
        nngp = twins.exact(nngp, var1)
    return Kernel(
        nngp=nngp,
        ntk=torch.zeros_like(nngp) if with_ntk else None,
        var1=var1,
        var2=var2,
        feature_shape=tuple(x1.shape[1:]),
        same_inputs=same_inputs,
        is_gaussian=False,
        spatial_layout=spatial_layout,
    )


def _spatial_input_kernel(x1, x2, same_inputs, with_ntk, twins) -> Kernel:
    """``input_kernel`` for ``(N, C, *S)`` inputs: the ``(N1, N2, *S, *S)`` layout."""
    (n1, channels), spatial = x1.shape[:2], tuple(x1.shape[2:])
    n2, positions = x2.shape[0], math.prod(spatial)
    flat1, flat2 = x1.reshape(n1, channels, positions), x2.reshape(n2, channels, positions)
    rows = flat1.transpose(1, 2).reshape(n1 * positions, channels)
    cols = flat2.transpose(1, 2).reshape(n2 * positions, channels)
    nngp = torch.mm(rows, cols.T).div_(channels).reshape(n1, positions, n2, positions).transpose(1, 2)
    nngp = nngp.reshape(n1, n2, *spatial, *spatial).contiguous()

    def self_covariance(x):
        flat = x.reshape(x.shape[0], channels, positions)
        return torch.bmm(flat.transpose(1, 2), flat).div_(channels).reshape(x.shape[0], *spatial, *spatial)

    return _input_kernel(nngp, self_covariance, x1, x2, same_inputs, with_ntk, twins, "full")


def _diagonal_input_kernel(x1, x2, same_inputs, with_ntk, twins) -> Kernel:
    """``input_kernel`` for ``(N, C, *S)`` inputs in the diagonal layout ``(N1, N2, *S)``:
    one (N1, C) x (C, N2) product per position."""
    (n1, channels), spatial = x1.shape[:2], tuple(x1.shape[2:])
    n2, positions = x2.shape[0], math.prod(spatial)
    by_position1 = x1.reshape(n1, channels, positions).permute(2, 0, 1)  # (P, N1, C)
    by_position2 = x2.reshape(n2, channels, positions).permute(2, 1, 0)  # (P, C, N2)
    nngp = torch.bmm(by_position1, by_position2).div_(channels).permute(1, 2, 0)
    nngp = nngp.reshape(n1, n2, *spatial).contiguous()

    def variances(x):
        return x.square().sum(1).div_(channels)

    return _input_kernel(nngp, variances, x1, x2, same_inputs, with_ntk, twins, "diagonal")
