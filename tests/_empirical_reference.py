"""Brute-force references for the empirical-kernel tests: plain autograd, explicit loops.

Nothing here uses torch.func or ntkit.empirical: the full Jacobian is built row by row with
``torch.autograd.grad`` (one backward pass per output unit and example), and the trace /
diagonal conventions are applied by looping over indices, so that an error in ntkit's
vectorized bookkeeping cannot cancel out.
"""

from __future__ import annotations

import itertools

import torch


def full_jacobian(model, x, params=None) -> torch.Tensor:
    """``J[n, *S, P]``: every output unit of every example against every chosen parameter."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    with torch.enable_grad():
        out = model(x)
        rows = []
        for index in range(out.numel()):
            grads = torch.autograd.grad(out.reshape(-1)[index], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows).reshape(*out.shape, -1).detach()


def full_ntk(model, x1, x2=None, params=None) -> torch.Tensor:
    """``Theta[i, *S, j, *S]`` from full Jacobians."""
    j1 = full_jacobian(model, x1, params)
    j2 = j1 if x2 is None else full_jacobian(model, x2, params)
    return torch.tensordot(j1, j2, dims=([j1.ndim - 1], [j2.ndim - 1]))


def apply_axes(full: torch.Tensor, trace_axes, diagonal_axes) -> torch.Tensor:
    """neural-tangents' conventions by loops: traced axes averaged, diagonal axes shared.

    ``full`` has shape ``(N1, *S, N2, *S)``; axes refer to the output ``(N, *S)``.
    """
    m = full.ndim // 2
    shape = full.shape[:m]
    n2 = full.shape[m]
    canon = lambda axes: sorted({a % m for a in ((axes,) if isinstance(axes, int) else axes)})  # noqa: E731
    trace, diag = canon(trace_axes), canon(diagonal_axes)
    # result axes: for each untraced axis a, ('d', a) or ('1', a), ('2', a)
    result_axes = []
    for a in range(m):
        if a in trace:
            continue
        result_axes += [("d", a)] if a in diag else [("1", a), ("2", a)]
    sizes = [n2 if (side == "2" and a == 0) else shape[a] for side, a in result_axes]
    out = torch.zeros(sizes, dtype=full.dtype)
    traced_sizes = [shape[a] for a in trace]
    count = 1
    for s in traced_sizes:
        count *= s
    for index in itertools.product(*[range(s) for s in sizes]):
        total = 0.0
        for t in itertools.product(*[range(s) for s in traced_sizes]):
            left, right = [0] * m, [0] * m
            for (side, a), v in zip(result_axes, index):
                if side in ("d", "1"):
                    left[a] = v
                if side in ("d", "2"):
                    right[a] = v
            for a, v in zip(trace, t):
                left[a] = right[a] = v
            total += float(full[tuple(left) + tuple(right)])
        out[index] = total / count
    return out


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the kernels' scale)."""
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())
