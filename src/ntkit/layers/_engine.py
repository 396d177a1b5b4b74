"""Evaluate a network's kernel map over all pairs of inputs, in blocks under a memory budget.

Every kernel map in ntkit is *pairwise*: the output for a pair of examples depends only on
that pair's statistics and on each example's own variance. A large kernel is therefore computed
block by block, each block passed through the whole network while it is small enough to stay
in cache; for ``x2 = x1`` only the blocks on and above the diagonal are computed and the others
are their transposes.

For images ``(N, C, *S)`` each pair carries ``|S|^2`` covariances (all pairs of positions), so
blocks hold fewer pairs: their side is chosen so that a block's covariance tensor has at most
``SPATIAL_BUDGET`` entries. A network without pooling that ends in ``Flatten`` needs only the
``|S|`` covariances of equal positions (the diagonal layout of :class:`ntkit.Kernel`): the
engine uses it when every layer accepts it (``Layer.diagonal_layout``), and falls back to all
pairs of positions when the network turns out to end on images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .. import _compiled
from .._errors import NtkitError
from .._inputs import Inputs, check_inputs, find_twins
from ..kernel import Kernel
from ._base import Layer
from ._memory import LIVE_BLOCK_TENSORS, check_pair_fits, check_result_fits, memory_budget
from ._spatial import transpose_pairs

DEFAULT_BLOCK = 512
#: On a GPU, blocks are limited by the memory budget alone (up to this side): a kernel map
#: launches a few dozen kernels per block whatever its size, and caches matter less.
GPU_BLOCK = 8192
#: Covariance entries per block of image pairs, (pairs) x |S|^2: 4M entries (32 MB in float64)
#: per tensor, of which a layer holds a few (nngp, ntk, temporaries of its kernel map).
SPATIAL_BUDGET = 1 << 22
#: The fixed cost of a block on the CPU (its Python, its small tensors), in covariance entries of
#: its first layer's pairs: a few ms for Myrtle-5, where an entry costs about 40 ns.
BLOCK_COST = 1 << 16
#: On a GPU a block of image pairs is split for mirroring only down to this many covariance
#: entries: below it the fixed cost of a block (host-side work, some 200 kernel launches and
#: their Python: about 8 ms for Myrtle-5 on an H200) outweighs the pairs that mirroring saves.
GPU_MIRRORED_BLOCK = 1 << 24


def _wanted(get: str | Sequence[str]) -> bool:
    """Whether the NTK is asked for; an error for anything but 'nngp' and 'ntk'."""
    names = (get,) if isinstance(get, str) else tuple(get)
    unknown = [g for g in names if g not in ("nngp", "ntk")]
    if unknown or not names:
        raise NtkitError(f"get must name 'nngp' and/or 'ntk', got {get!r}")
    return "ntk" in names


def _blocks(n1: int, n2: int, size: int, same: bool):
    """(rows, cols, on_diagonal) slices covering the kernel; the upper triangle when same.

    For x2 = x1 the diagonal blocks come first: they meet every example as itself, so a bad
    example (e.g. a zero vector before LayerNorm) is reported as a row of x1, never as a
    column of an x2 the caller did not pass.
    """
    starts1, starts2 = range(0, n1, size), range(0, n2, size)
    if same:
        pairs = [(i, i) for i in starts1] + [(i, j) for i in starts1 for j in starts2 if j > i]
    else:
        pairs = [(i, j) for i in starts1 for j in starts2]
    for i, j in pairs:
        yield slice(i, min(i + size, n1)), slice(j, min(j + size, n2)), same and i == j


def evaluate(
    layer: Layer,
    x1,
    x2,
    *,
    get,
    dtype: torch.dtype,
    block_size: int | None,
    progress: bool | None,
    budget=None,
) -> Kernel | tuple[Kernel, ...]:
    """``layer.kernel(x1, x2)``: see :meth:`ntkit.layers.Layer.kernel`."""
    with_ntk = _wanted(get)
    if block_size is not None and int(block_size) < 1:
        raise NtkitError(f"block_size must be a positive integer, got {block_size!r}")
    x1, x2, same = check_inputs(x1, x2, dtype, spatial=_has_spatial_layers(layer))
    budget = memory_budget(budget, x1.device)
    twins = find_twins(x1, x2, same)
    problem = (layer, x1, x2, same, with_ntk, twins)
    if x1.ndim > 2 and all(m.diagonal_layout for m in layer.modules() if isinstance(m, Layer)):
        try:
            return _evaluate(*problem, "diagonal", block_size, progress, budget)
        except _EndsOnImages:
            pass
    return _evaluate(*problem, "full", block_size, progress, budget)


class _EndsOnImages(Exception):
    """The network's output still has positions: the diagonal layout cannot describe it."""


def _evaluate(layer, x1, x2, same, with_ntk, twins, layout, block_size, progress, budget):
    """``evaluate`` with a chosen spatial layout for image inputs.

    A quarter of the memory budget goes to the blocks being computed, the rest to the result."""
    n1, n2 = x1.shape[0], x2.shape[0]
    size = _block_side(x1, layout, budget // 4) if block_size is None else int(block_size)
    if block_size is None and same and x1.ndim > 2:
        # Image pairs are costly: split so that mirroring skips much of the lower triangle
        size = _mirrored_side(n1, x1, layout, size, _halves_diagonal_blocks(layer, x1, layout))

    def kernel_map(rows: slice, cols: slice, on_diagonal: bool) -> tuple[list[Kernel], bool]:
        """The network's output Kernels on one block, as a list, and whether it has one output."""
        block_twins = None if twins is None else twins.block(rows, cols)
        k_out = layer._located_map_inputs(Inputs(x1[rows], x2[cols], on_diagonal, with_ntk, block_twins, layout))
        parts = [k_out] if isinstance(k_out, Kernel) else list(k_out)
        if any(part.diagonal and part.spatial_ndim for part in parts):
            raise _EndsOnImages
        return parts, isinstance(k_out, Kernel)

    if n1 <= size and n2 <= size:  # one block: no copies
        parts, single_output = kernel_map(slice(0, n1), slice(0, n2), same)
        kernels = [_mirrored(part) for part in parts] if same else parts
    else:
        blocks = list(_blocks(n1, n2, size, same))
        results: list[dict] = []
        for rows, cols, diagonal in tqdm(blocks, desc="kernel blocks", disable=_quiet(progress, len(blocks))):
            parts, single_output = kernel_map(rows, cols, diagonal)
            if not results:
                _check_result(parts, n1, n2, budget - budget // 4)
                results = [_allocate(p, n1, n2, same) for p in parts]
            for part, result in zip(parts, results):
                _write(result, part, rows, cols, diagonal, mirror=same and not diagonal)
        kernels = [_assemble(r, same) for r in results]
    return kernels[0] if single_output else tuple(kernels)


def _has_spatial_layers(layer: Layer) -> bool:
    """Whether the network takes images or sequences: a layer of it has a spatial kernel map.

    Without one, image inputs are refused with a hint, rather than silently treated as
    1x1 convolutions of a fully-connected network."""
    return any(getattr(module, "takes_images", False) for module in layer.modules())


def _block_side(x: torch.Tensor, layout: str, budget: int) -> int:
    """The default number of examples per block side: on the CPU 512, fewer for images, whose
    blocks hold at most ``SPATIAL_BUDGET`` covariances (to stay in cache); on a GPU up to
    ``GPU_BLOCK``. Always at most ``budget`` bytes in the ``LIVE_BLOCK_TENSORS`` tensors of a
    kernel map."""
    positions = x[0, 0].numel() if x.ndim > 2 else 1
    per_pair = positions if layout == "diagonal" else positions**2
    pair_bytes = per_pair * x.element_size() * LIVE_BLOCK_TENSORS
    check_pair_fits(pair_bytes, budget, per_pair)
    on_cpu = x.device.type == "cpu"
    side = min(DEFAULT_BLOCK if on_cpu else GPU_BLOCK, math.isqrt(budget // pair_bytes))
    if positions > 1 and on_cpu:
        side = min(side, math.isqrt(SPATIAL_BUDGET // per_pair))
    return max(1, side)


def _halves_diagonal_blocks(layer: Layer, x: torch.Tensor, layout: str) -> bool:
    """Whether the network computes only the pairs i <= j of a diagonal block (its image layers
    all run fused and mirrored on the CPU: ``_fusion.mirrors_same_inputs``)."""
    from . import _fusion
    from .combinators import Serial

    return (
        isinstance(layer, Serial) and layout == "full" and x.ndim == 4
        and _fusion.mirrors_same_inputs(layer.layers, x.shape[1:]) and _compiled.enabled(x)
    )


def _mirrored_side(n: int, x: torch.Tensor, layout: str, cap: int, halves: bool = False) -> int:
    """The block side (at most ``cap``) for x2 = x1 images that costs least: the pairs of images
    computed (``_pairs_computed``; ``halves``: a diagonal block computes its pairs i <= j only)
    and a fixed cost per block of ``BLOCK_COST`` covariance entries. On a GPU never below a side
    whose blocks hold ``GPU_MIRRORED_BLOCK`` entries."""
    positions = x[0, 0].numel()
    per_pair = positions**2 if layout == "full" else positions

    def cost(side: int) -> float:
        blocks = -(-n // side)
        return _pairs_computed(n, side, halves) + blocks * (blocks + 1) // 2 * BLOCK_COST / per_pair

    side = min(range(1, min(n, cap) + 1), key=lambda s: (cost(s), -s))
    if x.device.type == "cpu":
        return side
    return max(side, math.isqrt(GPU_MIRRORED_BLOCK // per_pair))


def _pairs_computed(n: int, side: int, halves: bool = False) -> int:
    """The pairs of images a layer computes for x2 = x1 in blocks of ``side``: a diagonal block all
    of its own (with ``halves`` those with i <= j), its variances among them; a block above it its
    pairs and the variances of its rows and columns (one pair's work per example); those below
    are mirrored."""
    blocks, last = -(-n // side), n % side
    squares = (n // side) * side**2 + last**2
    diagonal = (squares + n) // 2 if halves else squares
    return diagonal + (n * n - squares) // 2 + (blocks - 1) * n


def _check_result(parts: list[Kernel], n1: int, n2: int, budget: int) -> None:
    """The whole result must fit in what the blocks leave of the budget."""
    per_pair = sum(p.nngp[0, 0].numel() * (1 if p.ntk is None else 2) for p in parts)
    shape = (n1, n2) + tuple(parts[0].nngp.shape[2:])
    check_result_fits(per_pair * n1 * n2 * parts[0].nngp.element_size(), budget, shape, n1, n2)


def _quiet(progress: bool | None, n_blocks: int) -> bool | None:
    if progress is None:
        return None if n_blocks >= 16 else True  # tqdm: None disables off a terminal
    return not progress


def _allocate(k: Kernel, n1: int, n2: int, same: bool) -> dict:
    full = dict(dtype=k.dtype, device=k.device)
    return dict(
        template=k,
        nngp=torch.empty((n1, n2) + tuple(k.nngp.shape[2:]), **full),
        ntk=None if k.ntk is None else torch.empty((n1, n2) + tuple(k.ntk.shape[2:]), **full),
        var1=torch.empty((n1,) + tuple(k.var1.shape[1:]), **full),
        var2=None if same else torch.empty((n2,) + tuple(k.var2.shape[1:]), **full),
    )


def _write(result: dict, k: Kernel, rows: slice, cols: slice, diagonal: bool, mirror: bool) -> None:
    for name in ("nngp", "ntk"):
        block = getattr(k, name)
        if block is None:
            continue
        if diagonal:  # its lower triangle mirrors the upper one
            block = _mirror_upper(block)
        result[name][rows, cols] = block
        if mirror:
            result[name][cols, rows] = transpose_pairs(block, (block.ndim - 2) // 2)
    if diagonal or result["var2"] is not None:
        # For x2 = x1 the variances come from the diagonal blocks, whose NNGP diagonal they are.
        result["var1"][rows] = k.var1
    if result["var2"] is not None:
        result["var2"][cols] = k.var2


def _mirror_upper(block: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is ``block``'s: exact symmetry for x2 = x1.

    For image kernels ``(N, N, *S, *S)`` "symmetric" means ``K[j, i, p', p] = K[i, j, p, p']``:
    pairs (i, j) with i <= j are kept and the others are their spatial transposes.
    """
    if block.ndim == 2:
        upper = torch.ones(block.shape, dtype=torch.bool, device=block.device).triu_()
        return torch.where(upper, block, block.T)
    n = block.shape[0]
    upper = torch.ones((n, n), dtype=torch.bool, device=block.device).triu_()
    upper = upper.reshape(n, n, *(1,) * (block.ndim - 2))
    return torch.where(upper, block, transpose_pairs(block, (block.ndim - 2) // 2))


def _mirrored(k: Kernel) -> Kernel:
    ntk = None if k.ntk is None else _mirror_upper(k.ntk)
    return k.replace(nngp=_mirror_upper(k.nngp), ntk=ntk)


def _assemble(result: dict, same: bool) -> Kernel:
    var1 = result["var1"]
    return result["template"].replace(
        nngp=result["nngp"],
        ntk=result["ntk"],
        var1=var1,
        var2=var1 if same else result["var2"],
        same_inputs=same,
    )
