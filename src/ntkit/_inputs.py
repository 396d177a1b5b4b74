"""Checks on the inputs of ``kernel``, and the kernel of the inputs themselves."""

from __future__ import annotations

import torch

from ._errors import NtkitError
from .kernel import Kernel

FLOAT_DTYPES = (torch.float64, torch.float32)


def as_batch(x, argument: str, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """``x`` as a finite (N, features) tensor of ``dtype``, or an NtkitError saying what is wrong."""
    if dtype not in FLOAT_DTYPES:
        raise NtkitError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    x = torch.as_tensor(x)
    if x.ndim != 2:
        hint = (
            " (kernels of image or sequence inputs need convolutional layers; flatten x to "
            "(N, features) for a fully-connected network)"
            if x.ndim > 2
            else ""
        )
        raise NtkitError(f"{argument} has shape {tuple(x.shape)}; expected (N, features){hint}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise NtkitError(f"{argument} has shape {tuple(x.shape)}; it needs at least one example and one feature")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.bool)):
        raise NtkitError(f"{argument} has dtype {x.dtype}; expected a real tensor")
    x = x.to(dtype=dtype, device=device)
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise NtkitError(f"{argument} contains NaN or inf (first in row {row})")
    return x


def check_inputs(x1, x2, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validated ``(x1, x2, same_inputs)``: x2 None or ``x2 is x1`` means the same examples."""
    same = x2 is None or x2 is x1
    device = x1.device if isinstance(x1, torch.Tensor) else None
    x1 = as_batch(x1, "x1", dtype, device)
    if same:
        return x1, x1, True
    x2 = as_batch(x2, "x2", dtype, x1.device)
    if x2.shape[1] != x1.shape[1]:
        raise NtkitError(
            f"x1 has {x1.shape[1]} features per example but x2 has {x2.shape[1]} "
            f"(shapes {tuple(x1.shape)} and {tuple(x2.shape)})"
        )
    return x1, x2, False


def input_kernel(x1: torch.Tensor, x2: torch.Tensor, same_inputs: bool, with_ntk: bool) -> Kernel:
    """The kernel of the raw inputs: :math:`K(x, x') = x \\cdot x' / d`, no NTK yet.

    Dividing by the number of features ``d`` is the convention of Lee et al. 2018 (eq. 4) and
    neural-tangents, so that a following ``Dense`` has weight variance ``W_std**2 / d``.
    """
    features = x1.shape[1]
    nngp = torch.mm(x1, x2.T).div_(features)
    var1 = torch.linalg.vector_norm(x1, dim=1).square_().div_(features)
    if same_inputs:
        var2 = var1
        nngp.diagonal().copy_(var1)  # the exact self-products, whatever the matmul's rounding
    else:
        var2 = torch.linalg.vector_norm(x2, dim=1).square_().div_(features)
    return Kernel(
        nngp=nngp,
        ntk=torch.zeros_like(nngp) if with_ntk else None,
        var1=var1,
        var2=var2,
        feature_shape=(features,),
        same_inputs=same_inputs,
        is_gaussian=False,
    )
