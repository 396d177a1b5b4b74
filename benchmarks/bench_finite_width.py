"""Time ntkit.finite_width: the 1/n corrections against the kernel itself, the four-point
tensors at N = 32, and the exact samplers against sampling dense finite networks.

    .venv/bin/python benchmarks/bench_finite_width.py [--quick]

Writes its table into benchmarks/README.md (section "finite-width"). One thread per process
(the statistics are per pair and small; the numbers are then comparable on a loaded machine);
``--threads 2`` uses both cores.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import ntkit as nk  # noqa: E402
from ntkit.finite_width import corrections, four_point, sample_kernels  # noqa: E402

from _readme import update_section  # noqa: E402

SEED = 0
W_STD, B_STD = 1.4, 0.1


def mlp(activation, hidden: int, width: int = 256) -> nk.Layer:
    layers = [m for _ in range(hidden) for m in (nk.Dense(width, W_STD, B_STD), activation())]
    return nk.serial(*layers, nk.Dense(1, W_STD, B_STD))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def inputs(n: int, d: int = 10) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)


def corrections_rows(quick: bool):
    """K^1 and Theta^1 of a depth-5 MLP (5 hidden layers) against net.kernel on the same inputs."""
    sizes = {nk.ReLU: (200,) if quick else (200, 1000), nk.Erf: (50,) if quick else (50, 200)}
    for activation, ns in sizes.items():
        net = mlp(activation, 5)
        for n in ns:
            x = inputs(n)
            kernel = best_of(lambda: net.kernel(x), 3)
            fw = best_of(lambda: corrections(net, x), 2)
            yield (f"K¹, Θ¹ (`corrections`), depth 5, {activation.__name__}, N={n}", f"{fw:.3g} s",
                   f"net.kernel: {kernel:.3g} s", f"{fw / kernel:.0f}x the kernel")


def four_point_rows(quick: bool):
    for activation in (nk.ReLU, nk.Tanh):
        for hidden in (2,) if quick else (2, 4):
            net = mlp(activation, hidden)
            n = 8 if quick else 32
            x = inputs(n)
            elapsed = best_of(lambda: four_point(net, x), 1)
            yield (f"V, A, B, D, F (`four_point`), {hidden} hidden, {activation.__name__}, N={n}",
                   f"{elapsed:.3g} s", "", "goal: 10 s at N=32")


def dense_forward_grams(net_width: int, hidden: int, x: torch.Tensor, networks: int) -> torch.Tensor:
    """The baseline: draw every n x n weight matrix and run the networks, batched over networks;
    returns the last hidden layer's Gram matrices G = C_b + C_W/n sigma.sigma (what the
    collective sampler draws)."""
    g = torch.Generator().manual_seed(SEED)
    n, (count, d) = net_width, x.shape
    post = x.T.expand(networks, d, count)
    fan_in = d
    for _ in range(hidden):
        w = torch.randn(networks, n, fan_in, generator=g, dtype=torch.float64) * (W_STD / math.sqrt(fan_in))
        b = torch.randn(networks, n, 1, generator=g, dtype=torch.float64) * B_STD
        post = torch.relu(w @ post + b)
        fan_in = n
    return B_STD**2 + (W_STD**2 / n) * post.transpose(1, 2) @ post


def sampler_rows(quick: bool):
    """Time per sampled network for the same statistics: the output layer's Gram matrix (NNGP)
    and the NTK, by the collective sampler and by dense networks."""
    hidden, count = 3, 8
    networks = 200 if quick else 2000
    for width in (256,) if quick else (256, 1024):
        net = mlp(nk.ReLU, hidden, width)
        x = inputs(count)
        collective = best_of(lambda: sample_kernels(net, x, n_networks=networks, ntk=False), 2) / networks
        dense = best_of(lambda: dense_forward_grams(width, hidden, x, min(networks, 200)), 2) / min(networks, 200)
        yield (f"NNGP sample, width {width}, {hidden} hidden, N={count}", f"{1e3 * collective:.3g} ms/network",
               f"dense networks: {1e3 * dense:.3g} ms/network", f"{dense / collective:.0f}x faster")
        # the NTK of the network's one output, as monte_carlo_kernel computes it
        with_ntk = best_of(lambda: sample_kernels(net, x, n_networks=networks // 4, outputs=1), 1) / (networks // 4)
        mc_networks = 32 if quick else 64
        mc = best_of(lambda: nk.monte_carlo_kernel(net, x, n_samples=mc_networks, seed=SEED), 1) / mc_networks
        yield (f"NNGP + NTK sample, width {width}, {hidden} hidden, N={count}", f"{1e3 * with_ntk:.3g} ms/network",
               f"`monte_carlo_kernel` (dense, autodiff): {1e3 * mc:.3g} ms/network", f"{mc / with_ntk:.0f}x faster")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("corrections", "four_point", "samplers"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    groups = {"corrections": corrections_rows, "four_point": four_point_rows, "samplers": sampler_rows}
    rows = []
    for name, group in groups.items():
        if args.only and name != args.only:
            continue
        for row in group(args.quick):
            print(" | ".join(row), flush=True)
            rows.append(row)
    if args.quick or args.only:
        return
    table = [
        f"`make bench-finite-width` on this machine, {args.threads} torch thread(s), float64, best of 1-3 runs.",
        "",
        "| what | time | compared with | ratio |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    update_section("finite-width", "Results: finite width", "\n".join(table))


if __name__ == "__main__":
    main()
