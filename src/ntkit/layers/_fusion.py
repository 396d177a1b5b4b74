"""Layers whose kernel maps run as one: a 2-D ``Conv``, the ReLU-family activation after it and
the window pooling after that, if any (``Serial`` asks :func:`fused_map` at each layer, and
:func:`fused_inputs_map` for its first layers, from the raw inputs).

Each of these maps, run alone, reads and writes the whole block of covariances, and on images
the block is large (16 MB per pair of 32x32 images): their speed is that of memory. Run as one
(:mod:`ntkit._compiled.fused`), the convolution's output is made a plane at a time and never
written whole, nor is the activation's when a pooling follows. The result is the separate
maps' to round-off (to the last bit without pooling), so fusion is an implementation detail:
it applies where the separate maps would take their compiled paths (CPU blocks in the full
layout, autograd off), to the library's own ``Conv``, ``ABReLU`` family and ``AvgPool`` /
``SumPool`` (not to subclasses that change their maps), and otherwise the layers run one by
one. A layer whose input is wrong is left to its own map, which names it in the error.

Two savings come with it. A network's first Conv takes its window sums from the products of
the inputs' patches (``Conv.patch_sums``). In a block of a batch with itself, when the output
planes are small, only the pairs i <= j are computed and (j, i) is written as their transpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .. import _compiled
from .._errors import NtkitError
from .._inputs import Inputs
from ..kernel import Kernel
from ._base import Layer
from ._spatial import filter_taps, pad_axis, self_diagonal, self_pairs
from .activation import Activation
from .conv import Conv
from .pooling import _GlobalPool, _WindowPool
from .rectified import ABReLU
from .shape import Flatten

#: Output planes of at most this many positions are written transposed too (see ``_pairs``).
MIRRORED_POSITIONS = 16 * 16


def fused_map(layers: Sequence[Layer], index: int, k) -> tuple[Kernel, int] | None:
    """The Kernel after ``layers[index]`` and the layers fused with it, and how many layers that
    is; None when ``layers[index]`` does not start a run that can be fused on ``k``."""
    run = _run(layers, index, k.feature_shape if isinstance(k, Kernel) else None)
    if run is None or k.diagonal or not layers[index]._fused(k):
        return None
    conv, geom = layers[index], run.geom
    if _zero_padded(conv):  # the kernel pads the planes as it reads them
        prepare, padded, spec = (lambda t: t), True, _zero_padded_spec(conv, geom, k.feature_shape[0])
    else:
        prepare, taps, padded = conv._compiled_source(tuple(k.feature_shape[1:]), geom)
        if padded:  # every tap inside; the variances' sums need them listed
            taps = _inside_taps(geom)
        spec = _conv_spec(conv, taps, conv.strides, "padded" if padded else "taps", geom, k.feature_shape[0])

    def variances(var: torch.Tensor) -> torch.Tensor:
        diagonal = self_diagonal(var, 2)
        if padded or conv.padding == "circular":  # laid out as prepare lays out the pairs
            for axis, (_, lo, hi) in zip((1, 2), geom):
                diagonal = pad_axis(diagonal, axis, lo, hi, conv.padding)
        return diagonal

    out = _fused(run, spec, k.same_inputs, (k.nngp, k.ntk), False, (k.var1, k.var2), prepare, variances)
    return k.replace(sources=frozenset({id(run.conv)}), **out), run.length


def fused_inputs_map(layers: Sequence[Layer], inputs: Inputs) -> tuple[Kernel, int] | None:
    """``fused_map`` for a network's first layers: the Conv's window sums are the products of the
    inputs' patches (``Conv.patch_sums``, as in ``Conv.map_inputs``), mapped by a one-tap
    "convolution" with the Conv's affine map, from an NTK of zero."""
    x1 = inputs.x1
    shape = tuple(x1.shape[1:])
    run = _run(layers, 0, shape if inputs.spatial_layout == "full" and x1.ndim == 4 else None)
    if run is None or not _compiled.enabled(x1, inputs.x2):
        return None
    conv, geom = layers[0], run.geom
    summed, self1, self2 = conv.patch_sums(inputs, geom)
    identity = [[(0, 0, out)] for out, _, _ in geom]
    spec = _conv_spec(conv, identity, (1, 1), "identity", geom, shape[0])
    following = None if run.pool is not None else _run(layers, run.length, (conv.out_channels, *spec["out_size"]))
    if following is not None and _zero_padded(following.conv):
        out = _chained(run, spec, following, inputs, summed, self1, self2)
        return Kernel(same_inputs=inputs.same_inputs, sources=frozenset({id(following.conv)}), **out), \
            run.length + following.length
    out = _fused(run, spec, inputs.same_inputs, (summed, None), inputs.with_ntk, (self1, self2), lambda t: t,
                 lambda var: self_diagonal(var, 2))
    return Kernel(same_inputs=inputs.same_inputs, sources=frozenset({id(conv)}), **out), run.length


def mirrors_same_inputs(layers: Sequence[Layer], feature_shape) -> bool:
    """Whether, in a block of a batch of images with itself, the layers (of a ``Serial``) compute
    their image work for the pairs i <= j only: every layer up to a global pooling or ``Flatten``
    (or to the end) is in a fused run whose output planes are mirrored (``_pairs``). The engine
    sizes its blocks by it (``_engine._mirrored_side``): such a network's diagonal blocks cost
    half their pairs, so larger blocks cost less, where other networks compute all pairs of a
    diagonal block and gain from smaller blocks."""
    index, shape = 0, tuple(feature_shape)
    while index < len(layers):
        if isinstance(layers[index], (_GlobalPool, Flatten)):
            return True
        run = _run(layers, index, shape)
        if run is None:
            return False
        size = tuple(g[0] for g in (run.geom if run.pool is None else run.pool_geom))
        shape = (run.conv.out_channels, *size)
        following = _run(layers, index + run.length, shape) if index == 0 and run.pool is None else None
        chained = following is not None and _zero_padded(following.conv)  # never written: see _chained
        if not chained and math.prod(size) > MIRRORED_POSITIONS:
            return False
        index += run.length
    return True


def _zero_padded(conv: Conv) -> bool:
    """A Conv whose fused map reads its planes padded with zeros as it goes (``zero-padded``)."""
    return conv.filter_shape == (3, 3) and conv.strides == (1, 1) and conv.padding != "circular"


def _inside_taps(geom) -> list:
    """The taps of a 3x3 filter on inputs padded as ``geom`` says: every tap inside."""
    return [[(j, 0, out) for j in range(3)] for out, _, _ in geom]


def _zero_padded_spec(conv: Conv, geom, in_channels: int) -> dict:
    spec = _conv_spec(conv, _inside_taps(geom), (1, 1), "zero-padded", geom, in_channels)
    spec["padding"] = (geom[0][1], geom[1][1])
    return spec


def _output_variances(spec: dict, diagonal: torch.Tensor) -> torch.Tensor:
    """A Conv's output variance at each position (N, H' W'), from its input variances
    ``diagonal`` (N, H, W), laid out as ``spec``'s taps read them."""
    out = _compiled.conv_variances(
        diagonal, spec["taps"], spec["strides"], spec["out_size"], spec["window"], spec["w2"], spec["b2"],
        spec["ntk_parameterization"], spec["fan_in"],
    )
    return out.reshape(out.shape[0], -1)


def _chained(run: _Run, spec: dict, following: _Run, inputs: Inputs, summed, self1, self2) -> dict:
    """A network's first run (Conv and ReLU, from the window sums of its patches, ``spec``) and the
    run after it in one compiled pass: the second Conv loads its input planes through the first
    Conv and ReLU (``conv_relu_pool_padded`` with ``map_first``), so that the first ReLU's block,
    NNGP and NTK, is never written, and the first run is computed only for the pairs the second
    computes (for x2 = x1 with small output planes, i <= j). Entries equal the two runs' one after
    the other bit for bit."""
    a, b = run.activation.a, run.activation.b
    mean_square = (a * a + b * b) / 2
    conv_size = spec["out_size"]

    def first_variances(var: torch.Tensor) -> torch.Tensor:
        """The first Conv's output variance at each position (N, H' W'), from its window sums."""
        return _output_variances(spec, self_diagonal(var, 2))

    def diagonal(var: torch.Tensor) -> torch.Tensor:
        """The second Conv's input variance at each position, padded: the first ReLU's outputs'
        self-covariances, where the correlation is 1 and the dual is ``mean_square`` times the
        variance (in float64, then rounded, as the compiled dual computes it)."""
        relu_var = (mean_square * first_variances(var).double()).to(var.dtype)
        relu_var = relu_var.reshape(var.shape[0], *conv_size)
        for axis, (_, lo, hi) in zip((1, 2), following.geom):
            relu_var = pad_axis(relu_var, axis, lo, hi, "same")
        return relu_var

    spec2 = _zero_padded_spec(following.conv, following.geom, run.conv.out_channels)
    return _fused(following, spec2, inputs.same_inputs, (summed, None), inputs.with_ntk, (self1, self2), lambda t: t,
                  diagonal, first=(spec, (a, b), first_variances))


class _Run(NamedTuple):
    """Layers that can run fused: a Conv, its activation, a pooling or None; their geometries."""

    conv: Conv
    activation: ABReLU
    pool: _WindowPool | None
    geom: list
    pool_geom: list | None

    @property
    def length(self) -> int:
        return 2 if self.pool is None else 3


def _run(layers: Sequence[Layer], index: int, feature_shape) -> _Run | None:
    """The run of layers starting at ``index`` that can be fused on inputs of ``feature_shape``
    (images), or None; a layer whose input is wrong is left to its own map, to name itself."""
    if feature_shape is None or len(feature_shape) != 3 or index + 1 >= len(layers):
        return None
    conv, activation = layers[index], layers[index + 1]
    if not (_plain_conv(conv) and _compiled_relu(activation)):
        return None
    pool = layers[index + 2] if index + 2 < len(layers) and _plain_pool(layers[index + 2]) else None
    try:
        geom = conv._check_kernel_input(tuple(feature_shape))
        conv_size = tuple(g[0] for g in geom)
        pool_geom = None if pool is None else pool._geometry((conv.out_channels, *conv_size))
    except NtkitError:
        return None
    if pool is not None and pool._edge_scales(conv_size, pool_geom, torch.empty(0)) is not None:
        pool = pool_geom = None  # AvgPool(count_include_pad=False) at edges: per-position scales
    return _Run(conv, activation, pool, geom, pool_geom)


def _plain_conv(layer) -> bool:
    return isinstance(layer, Conv) and type(layer).kernel_map is Conv.kernel_map and len(layer.filter_shape) == 2


def _compiled_relu(layer) -> bool:
    """An ``ABReLU`` whose map is the compiled one of ``ABReLU.duals`` (not linear, no own dual)."""
    if not isinstance(layer, ABReLU) or layer.a == layer.b:
        return False
    kind = type(layer)
    return kind.dual is ABReLU.dual and kind.duals is ABReLU.duals and kind.kernel_map is Activation.kernel_map


def _plain_pool(layer) -> bool:
    return (
        isinstance(layer, _WindowPool)
        and type(layer).kernel_map is _WindowPool.kernel_map
        and len(layer.window_shape) == 2
        and layer.padding != "circular"
    )


def _conv_spec(conv: Conv, taps, strides, layout: str, geom, in_channels: int) -> dict:
    window = math.prod(conv.filter_shape)
    return dict(
        taps=taps, strides=strides, layout=layout, out_size=tuple(g[0] for g in geom), window=window,
        w2=conv.W_std**2, b2=None if conv.b_std is None else conv.b_std**2,
        ntk_parameterization=conv.parameterization == "ntk", fan_in=in_channels * window,
    )


def _fused(run: _Run, spec: dict, same_inputs: bool, pairs: tuple, zero_ntk: bool, variances: tuple, prepare,
           diagonal, first: tuple | None = None) -> dict:
    """The fields of the Kernel after a run, from the Conv's inputs: ``pairs`` (nngp, ntk) of the
    block (N1, N2, ...) and ``variances`` (var1, var2; None when they are the pairs' self-pairs),
    which ``prepare`` lays out for ``conv.conv_plane``; ``diagonal(var)``: the input variance at
    each position (N, H, W), laid out alike. With ``first`` = (conv spec, relu, variances(var)), a
    network's first Conv and ReLU run too, from their window sums (see ``_chained``)."""
    conv_size = spec["out_size"]
    if run.pool is None:
        pool_spec = dict(pooling=False, taps=[[(0, 0, size)] for size in conv_size], strides=(1, 1), out_size=conv_size,
                         scale=1.0)
    else:
        pool = run.pool
        pool_spec = dict(
            pooling=True,
            taps=[
                [(source.start, target.start, target.stop - target.start) for source, target in filter_taps(size, w, s, g)]
                for size, w, s, g in zip(conv_size, pool.window_shape, pool.strides, run.pool_geom)
            ],
            strides=pool.strides, out_size=tuple(g[0] for g in run.pool_geom), scale=pool._scale() ** 2,
        )
    relu = (run.activation.a, run.activation.b)

    def conv_variances(var: torch.Tensor) -> torch.Tensor:
        """The Conv outputs' variance at each position, (N, H' W')."""
        return _output_variances(spec, diagonal(var))

    def fused(t: torch.Tensor, ntk: torch.Tensor | None, zero_ntk: bool, pairs, variances, in_place: bool = False,
              first_variances: tuple | None = None):
        batch = t.shape[: t.ndim - 4]
        t = prepare(t)
        source = t.reshape(-1, *t.shape[-4:])
        source_ntk = None if ntk is None else prepare(ntk).reshape(source.shape)
        chain = None if first is None else (first[0], first[1], first_variances)
        out, out_ntk = _compiled.conv_relu_pool(
            source, source_ntk, spec, pairs, variances, relu, pool_spec, source.shape[0], zero_ntk, in_place, chain
        )
        shape = (*batch, *out.shape[1:])
        return out.reshape(shape), None if out_ntk is None else out_ntk.reshape(shape)

    nngp, ntk = pairs
    var1, var2 = variances
    n1, n2 = nngp.shape[:2]
    if var1 is None:  # x2 is x1: the self-pairs
        var1 = self_pairs(nngp)
    d1 = conv_variances(var1)
    d2 = d1 if same_inputs else conv_variances(var2)
    f1 = f2 = None
    if first is not None:  # the first Conv's output variances, for its ReLU
        f1 = first[2](var1)
        f2 = f1 if same_inputs else first[2](var2)
    # x2 = x1: compute the pairs i <= j and write each also as (j, i), transposed; unless the
    # output planes are large, where the transposed writes, a page apart, cost more than the pair
    # (and a transposing copy after the kernel about as much)
    mirror = same_inputs and math.prod(pool_spec["out_size"]) <= MIRRORED_POSITIONS
    # the patch products are the caller's temporary: K overwrites them, plane by plane
    in_place = spec["layout"] == "identity" and run.pool is None and not mirror and nngp.is_contiguous()
    nngp, ntk = fused(nngp, ntk, zero_ntk, _pairs(n1, n2, same_inputs, mirror), (d1, d2), in_place, (f1, f2))

    def self_covariances(var: torch.Tensor, d: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
        examples = torch.arange(var.shape[0])
        alone = torch.full_like(examples, -1)
        pairs = (examples, examples, examples, torch.ones(var.shape[0], dtype=torch.bool), examples, alone)
        return fused(var, None, False, pairs, (d, d), first_variances=(f, f))[0]

    if same_inputs:
        var1 = var2 = self_pairs(nngp).contiguous()
    else:
        var1, var2 = self_covariances(var1, d1, f1), self_covariances(var2, d2, f2)
    return dict(
        nngp=nngp, ntk=ntk, var1=var1, var2=var2, feature_shape=(run.conv.out_channels, *pool_spec["out_size"]),
        is_gaussian=False, centred=False,
    )


def _pairs(n1: int, n2: int, same_inputs: bool, mirror: bool) -> tuple[torch.Tensor, ...]:
    """The pairs a fused kernel computes in a block (see :mod:`ntkit._compiled.fused`): all, or with
    ``mirror`` (a batch with itself) those with i <= j, each written also transposed as (j, i)."""
    first, second = torch.meshgrid(torch.arange(n1), torch.arange(n2), indexing="ij")
    first, second = first.reshape(-1), second.reshape(-1)
    source = first * n2 + second
    if not mirror:
        same = (first == second) if same_inputs else torch.zeros_like(source, dtype=torch.bool)
        return source, first, second, same, source, torch.full_like(source, -1)
    upper = first <= second
    first, second, source = first[upper], second[upper], source[upper]
    return source, first, second, first == second, source, torch.where(first < second, second * n2 + first, -1)
