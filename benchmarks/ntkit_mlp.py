"""Time ntkit's infinite-width NNGP/NTK of a 3-hidden-layer ReLU MLP.

Runs in the repository's own venv, one size and dtype per process, and prints
one JSON line (see _measure.py). The network and data match peer_mlp.py.
torch keeps its default thread count. With --compare DIR (nngp.npy and ntk.npy
written by ``peer_mlp.py --save DIR`` for the same --n), the JSON line also
holds the largest elementwise relative differences from those kernels.

    .venv/bin/python benchmarks/ntkit_mlp.py --n 1000 --dtype float64 --repeats 5
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from _inputs import make_inputs
from _measure import print_report, time_calls

try:
    import ntkit as nk
except ImportError:  # not installed into the venv: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ntkit as nk


def build_network():
    """The benchmark network, in ntkit."""
    return nk.serial(
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(1, W_std=1.5, b_std=0.05),
    )


def max_relative_difference(actual: torch.Tensor, reference_npy: Path) -> float:
    """max |actual - ref| / |ref| over all entries, ref loaded from a .npy."""
    ref = np.load(reference_npy).astype(np.float64)
    got = actual.detach().to(torch.float64).cpu().numpy()
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} vs reference {ref.shape} in {reference_npy}")
    scale = np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got - ref) / scale))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--dtype", choices=("float64", "float32"), required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="directory with nngp.npy, ntk.npy")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    net = build_network()
    x = torch.from_numpy(make_inputs(args.n, args.dtype))
    result = {}

    def run():
        result["kernel"] = net.kernel(x, dtype=dtype)

    timings = time_calls(run, args.repeats)
    extra = {}
    if args.compare:
        kernel = result["kernel"]
        extra = {
            "max_rel_nngp": max_relative_difference(kernel.nngp, args.compare / "nngp.npy"),
            "max_rel_ntk": max_relative_difference(kernel.ntk, args.compare / "ntk.npy"),
        }
    version = getattr(nk, "__version__", "(unversioned)")
    print_report(timings, library=f"ntkit {version}", backend=f"torch {torch.__version__}",
                 torch_threads=torch.get_num_threads(), **extra)


if __name__ == "__main__":
    main()
