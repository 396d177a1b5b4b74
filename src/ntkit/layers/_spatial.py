"""The spatial layout of image kernels, and the window sums that convolutions and pooling share.

An image kernel between batches of N1 and N2 examples with spatial shape S (``(L,)`` or
``(H, W)``) is a tensor of shape ``(N1, N2, *S, *S)``: entry ``[i, j, p, p']`` is the covariance
of one channel at position p of example i with position p' of example j. Axis ``2 + d`` and
axis ``2 + n + d`` (n the number of spatial dimensions) are the *paired* axes of dimension d.
Self-covariances ``var1`` have shape ``(N1, *S, *S)``, the same layout without the second batch.

The finite face uses the same padding and window functions on ``(N, C, *S)`` tensors, so that
the two faces cannot disagree about where a window starts.
"""

from __future__ import annotations

import math

import torch

from .. import _compiled
from .._errors import NtkitError

PADDINGS = ("valid", "same", "circular")


def as_tuple(value, n: int, argument: str, layer: str) -> tuple[int, ...]:
    """``value`` (an int or a tuple of n positive ints) as a tuple of n ints."""
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or not all(isinstance(v, int) and v >= 1 for v in values):
        raise NtkitError(f"{layer}: {argument} must be a positive int or a tuple of {n}, got {value!r}")
    return values


def check_padding(padding: str, layer: str) -> str:
    if padding not in PADDINGS:
        raise NtkitError(f"{layer}: padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def window_geometry(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
    """``(out, lo, hi)``: output length and padding before and after one axis of length ``size``.

    "valid": no padding, ``out = (size - window) // stride + 1``. "same" and "circular": the
    output has ``ceil(size / stride)`` positions and the padding is split as evenly as possible,
    the extra one after (as TensorFlow, neural-tangents and ``torch`` with ``padding="same"``).
    Raises ValueError (turned into an NtkitError by the caller) when a valid window does not fit.
    """
    if padding == "valid":
        if size < window:
            raise ValueError
        return (size - window) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2


def geometry(spatial: tuple[int, ...], window, stride, padding: str, layer: str, hint: str = ""):
    """``window_geometry`` per dimension, with an error naming the layer for a window too large."""
    try:
        return [window_geometry(n, f, s, padding) for n, f, s in zip(spatial, window, stride)]
    except ValueError:
        raise NtkitError(
            f"the image has spatial shape {tuple(spatial)}, smaller than the {layer} window "
            f"{tuple(window)} with padding='valid'; use padding='same' or a smaller window{hint}"
        ) from None


def pad_axis(t: torch.Tensor, axis: int, lo: int, hi: int, padding: str) -> torch.Tensor:
    """``t`` padded along ``axis``: zeros ("same", "valid") or periodically ("circular")."""
    if lo == 0 and hi == 0:
        return t
    size = t.shape[axis]
    if padding == "circular":
        index = torch.arange(-lo, size + hi, device=t.device) % size
        return t.index_select(axis, index)
    shape = list(t.shape)
    shape[axis] = size + lo + hi
    padded = t.new_zeros(shape)
    padded.narrow(axis, lo, size).copy_(t)
    return padded


def filter_taps(size: int, window: int, stride: int, geom: tuple[int, int, int]):
    """For each filter tap j: ``(source, target)`` slices with :math:`y[q] \\mathrel{+}= t[s q + j - lo]`.

    With zero padding, only the outputs q whose input position lies inside the image receive
    the tap, so no padded copy is made; "circular" taps are taken from a periodic copy (see
    ``window_sum``), whose every position is inside.
    """
    out, lo, _ = geom
    for j in range(window):
        first = max(0, -((j - lo) // stride))  # the smallest q with s q + j - lo >= 0
        last = min(out - 1, (size - 1 + lo - j) // stride)
        if last >= first:
            start = stride * first + j - lo
            yield slice(start, stride * last + j - lo + 1, stride), slice(first, last + 1)


def _prepared(t: torch.Tensor, axes, geom, padding: str):
    """``t`` made periodic along ``axes`` for "circular" (and the geometry without padding)."""
    out, lo, hi = geom
    if padding != "circular" or (lo == 0 and hi == 0):
        return t, geom
    for axis in axes:
        t = pad_axis(t, axis, lo, hi, padding)
    return t, (out, 0, 0)


def _summed(t: torch.Tensor, axes, out: int, taps, compiled: bool) -> torch.Tensor:
    """:math:`\\sum_j t[\\text{source}_j]` written into ``target_j`` along ``axes`` (one axis, or two
    paired ones that take the same slices). A tap that covers every output (the centre tap of a
    "same" window, any tap of a "valid" one) starts the sum as a copy; otherwise it starts
    from zeros. One pass fewer than adding every tap into zeros.

    With ``compiled`` (kernel maps only: the finite face needs autograd) and a CPU tensor, the
    same sums in the same order in one compiled pass (``ntkit._compiled.window``)."""
    taps = list(taps)
    covering = next((i for i, (_, target) in enumerate(taps) if target == slice(0, out)), None)
    if compiled and _compiled.enabled(t):
        return _compiled.window_sum(t, axes, out, taps, -1 if covering is None else covering)
    index = [slice(None)] * t.ndim

    def at(slices):
        for axis in axes:
            index[axis] = slices
        return tuple(index)

    if covering is None:
        shape = list(t.shape)
        for axis in axes:
            shape[axis] = out
        total = t.new_zeros(shape)
    else:
        total = t[at(taps.pop(covering)[0])].clone(memory_format=torch.contiguous_format)
    for source, target in taps:
        total[at(target)] += t[at(source)]
    return total


def window_sum(
    t: torch.Tensor, axis: int, window: int, stride: int, geom: tuple[int, int, int], padding: str,
    compiled: bool = False,
):
    """:math:`y[q] = \\sum_{j < w} t_{pad}[s q + j]` along one axis (pooling, finite or kernel;
    ``compiled`` only for kernel maps, see ``_summed``)."""
    t, geom = _prepared(t, (axis,), geom, padding)
    return _summed(t, (axis,), geom[0], filter_taps(t.shape[axis], window, stride, geom), compiled)


def diagonal_window_sum(t, axes: tuple[int, int], window: int, stride: int, geom, padding: str, compiled: bool = False):
    """:math:`y[q, q'] = \\sum_{j < w} t_{pad}[s q + j,\\, s q' + j]` along two paired axes.

    The kernel of a convolution: both positions see the same filter tap j (Novak et al. 2019,
    eq. 8; Arora et al. 2019, eq. 7), so only shifts along the diagonal are summed.
    """
    t, geom = _prepared(t, axes, geom, padding)
    return _summed(t, axes, geom[0], filter_taps(t.shape[axes[0]], window, stride, geom), compiled)


def self_diagonal(var: torch.Tensor, n: int) -> torch.Tensor:
    """The per-position variances ``var[i, p, p]``: ``(N, *S, *S) -> (N, *S)``."""
    spatial = tuple(var.shape[1 : 1 + n])
    positions = math.prod(spatial)
    return var.reshape(var.shape[0], positions, positions).diagonal(dim1=1, dim2=2).reshape(var.shape[0], *spatial)


def paired_diagonal(t: torch.Tensor, first: int, n: int) -> torch.Tensor:
    """A view of the entries p = p' of ``t``, whose paired spatial axes start at ``first``:
    ``(..., *S, *S, ...) -> (..., ..., *S)`` (diagonal axes last, as ``Tensor.diagonal``)."""
    for d in range(n):
        t = t.diagonal(0, first, first + n - d)
    return t


def position_mask(spatial: tuple[int, ...], device) -> torch.Tensor:
    """Boolean ``(*S, *S)``, true where p = p'."""
    positions = math.prod(spatial)
    return torch.eye(positions, dtype=torch.bool, device=device).reshape(*spatial, *spatial)


def transpose_pairs(t: torch.Tensor, n: int) -> torch.Tensor:
    """``K(x', x)`` from ``K(x, x')``: swap the batch axes and the two spatial groups."""
    if n == 0:
        return t.transpose(0, 1)
    return t.permute([1, 0] + list(range(2 + n, 2 + 2 * n)) + list(range(2, 2 + n)))


def set_self(nngp: torch.Tensor, var: torch.Tensor) -> None:
    """``nngp[i, i] = var[i]`` in place: a ``same_inputs`` block's self-pairs are the variances."""
    if nngp.ndim == 2:
        nngp.diagonal().copy_(var)
        return
    index = torch.arange(var.shape[0], device=var.device)
    nngp[index, index] = var


def self_pairs(t: torch.Tensor) -> torch.Tensor:
    """``t[i, i]`` of a same-inputs block (N, N, ...), as a view (N, ...): each example with itself."""
    return t.diagonal(0, 0, 1).movedim(-1, 0)


def output_variances(k, nngp: torch.Tensor, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """The variances of a layer's outputs, whose covariances are ``nngp``, with ``nngp[i, i]``
    exactly the variances in a same-inputs block.

    ``fn`` maps the input variances (self-covariances for images) by the same operations as the
    layer's map of a pair, so that ``fn(var1)[i]`` is what ``nngp[i, i]`` holds. In a
    same-inputs block of images in the full layout the variances are therefore copied from
    ``nngp``'s self-pairs: computing them again would cost as much as N more pairs of images.
    Elsewhere ``fn`` computes them (vectors and the diagonal layout: cheap) and, in a
    same-inputs block, they are written into ``nngp``'s self-pairs."""
    if k.same_inputs and k.spatial_ndim and not k.diagonal:
        var = self_pairs(nngp).contiguous()
        return var, var
    var1, var2 = k.map_variances(fn)
    if k.same_inputs:
        set_self(nngp, var1)
    return var1, var2


def linear_map(k, fn, **changes):
    """The Kernel after a parameter-free linear map of the positions (pooling, Flatten).

    ``fn(t, first)`` maps one statistic whose position axes start at axis ``first`` (2 for
    ``nngp`` and ``ntk``, 1 for the self-covariances); the same map serves all four, and the
    self-pairs of a same-inputs block stay exactly the variances."""
    nngp = fn(k.nngp, 2)
    var1, var2 = output_variances(k, nngp, lambda v: fn(v, 1))
    ntk = None if k.ntk is None else fn(k.ntk, 2)
    return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, **changes)


def nhwc_hint(feature_shape: tuple[int, ...]) -> str:
    """A hint when ``(C, *S)`` looks like channels-last data: a short last axis, many "channels"."""
    if len(feature_shape) >= 2 and feature_shape[-1] in (1, 3, 4) and feature_shape[0] > feature_shape[-1]:
        return (
            f" (the last axis has {feature_shape[-1]} entries, like channels: if the data is NHWC/NLC, "
            "move channels to axis 1, e.g. x.permute(0, 3, 1, 2); ntkit expects NCHW/NCL)"
        )
    return ""
