"""The memory budget of a kernel computation: its default, and what fits in it."""

from __future__ import annotations

import math
import os
import re

import torch

from .._errors import NtkitError

#: Tensors of a block's size that a kernel map holds at once (nngp, ntk, the next layer's
#: two, and temporaries such as correlations and angles); measured peaks stay below it.
LIVE_BLOCK_TENSORS = 10

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def available_memory(device: torch.device) -> int:
    """Bytes free now: ``torch.cuda.mem_get_info`` on a GPU, ``MemAvailable`` on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def memory_budget(value, device: torch.device) -> int:
    """The budget in bytes: ``value`` (bytes, or a string such as ``"2GB"``), by default half
    of the memory available on ``device``."""
    if value is None:
        return available_memory(device) // 2
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?B?)\s*", value.upper())
        if match is None:
            raise NtkitError(f"memory_budget must be bytes or a string such as '4GB', got {value!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).rstrip("B")]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise NtkitError(f"memory_budget must be a positive number of bytes, got {value!r}")
    return int(value)


def readable(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1024 or unit == "TB":
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1024
    raise AssertionError


def check_result_fits(result_bytes: int, budget: int, shape: tuple[int, ...], n1: int, n2: int) -> None:
    """An error saying what the result would need, and how to tile it, when over budget."""
    if result_bytes <= budget:
        return
    tiles = math.ceil(math.sqrt(result_bytes / budget))
    raise NtkitError(
        f"the kernel would need {readable(result_bytes)} for its result (NNGP and NTK tensors of "
        f"shape {shape}), more than the memory budget of {readable(budget)}. Compute it in tiles, "
        f"e.g. net.kernel(x1[a:b], x2[c:d]) for about {tiles} x {tiles} tiles of "
        f"~{math.ceil(n1 / tiles)} x ~{math.ceil(n2 / tiles)} examples, saving each; end the network "
        "with pooling or Flatten and a readout so that each pair needs fewer entries; ask for "
        "get='nngp' only; or pass a larger memory_budget"
    )


def check_pair_fits(pair_bytes: int, budget: int, per_pair: int) -> None:
    """An error when even one pair of examples does not fit in the budget."""
    if pair_bytes <= budget:
        return
    raise NtkitError(
        f"one pair of examples needs {readable(pair_bytes)} of working memory ({per_pair} covariances "
        f"per pair of images, about {LIVE_BLOCK_TENSORS} tensors of them at once), more than the memory "
        f"budget of {readable(budget)}: use smaller images, pool earlier, or pass a larger memory_budget"
    )
