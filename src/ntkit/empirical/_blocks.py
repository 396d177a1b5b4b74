"""Kernels assembled block by block from chunks of examples, under a memory budget.

A kernel between ``x1`` and ``x2`` is computed from chunks of at most ``chunk`` examples: each
chunk's features (Jacobians, layer inputs and cotangents, outputs) are computed once per row of
blocks, and the column chunks' features are kept when they all fit in half the budget (then,
with ``x2 = x1``, every chunk's features are computed once). With
``x2 = x1`` only the blocks on and above the diagonal are computed; the others are their
transposes, and the diagonal blocks are symmetrized, so the kernel is exactly symmetric.
"""

from __future__ import annotations

import numbers
import os

import torch
from tqdm.auto import tqdm

from .._errors import NtkitError

GIB = 2**30


def resolve_budget(memory_budget, device: torch.device) -> float:
    """The working-memory budget in bytes: the caller's, or a default for the device.

    The default is half the free memory of a CUDA device, and on the CPU a quarter of the
    available memory, at most 4 GiB.
    """
    if memory_budget is not None:
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not memory_budget > 0:
            raise NtkitError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        return float(memory_budget)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 16 * GIB
    return float(min(4 * GIB, available / 4))


def chunk_size(per_example: float, batch_size, budget: float, n: int, what: str) -> int:
    """Examples per chunk: ``batch_size`` if given, else as many as fit twice in the budget."""
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise NtkitError(f"batch_size must be a positive integer, got {batch_size!r}")
        return min(int(batch_size), n)
    if per_example > budget:
        raise NtkitError(
            f"memory_budget={budget:.4g} bytes is smaller than the ~{per_example:.3g} bytes that one "
            f"example needs ({what}); raise memory_budget, select fewer params, or pass batch_size=1 "
            "to run regardless"
        )
    return int(max(1, min(n, budget // (2 * per_example))))


def _quiet(progress, n_blocks: int):
    if progress is None:
        return None if n_blocks >= 16 else True  # tqdm: None disables off a terminal
    return not progress


def assemble(features, contract, x1, x2, same: bool, batch_diagonal: bool, chunk: int, *,
             transpose, cache_columns: bool, progress=None, desc: str = "kernel blocks") -> torch.Tensor:
    """The kernel ``(n1, n2, ...)`` (or ``(n, ...)`` for a diagonal batch axis) from blocks.

    ``features(x)`` computes a chunk's features, ``contract(f1, f2, diagonal)`` a block, and
    ``transpose(block)`` the block of the swapped pair of chunks.
    """
    n1, n2 = x1.shape[0], x2.shape[0]
    rows = [slice(i, min(i + chunk, n1)) for i in range(0, n1, chunk)]
    cols = rows if same else [slice(j, min(j + chunk, n2)) for j in range(0, n2, chunk)]
    out = None

    def write(index, block, full_shape):
        nonlocal out
        if out is None:
            out = block.new_empty(full_shape + tuple(block.shape[len(full_shape):]))
        out[index] = block

    if batch_diagonal:
        for r in tqdm(rows, desc=desc, disable=_quiet(progress, len(rows))):
            f1 = features(x1[r])
            f2 = f1 if same else features(x2[r])
            write(r, contract(f1, f2, True), (n1,))
        return out

    n_blocks = len(rows) * (len(rows) + 1) // 2 if same else len(rows) * len(cols)
    cache = {}
    with tqdm(total=n_blocks, desc=desc, disable=_quiet(progress, n_blocks)) as bar:
        for i, r in enumerate(rows):
            f1 = cache.pop(i) if same and i in cache else features(x1[r])  # no later row reads it
            for j, c in enumerate(cols):
                if same and j < i:
                    continue
                if same and j == i:
                    f2 = f1
                elif j in cache:
                    f2 = cache[j]
                else:
                    f2 = features(x2[c])
                    if cache_columns:
                        cache[j] = f2
                block = contract(f1, f2, False)
                if same and i == j:
                    block = (block + transpose(block)) / 2  # exactly symmetric
                write((r, c), block, (n1, n2))
                if same and i != j:
                    out[c, r] = transpose(block)
                bar.update()
    return out
