"""Time nngeometry's NTK (its Gram matrix of per-example Jacobians) on one benchmark network.

Runs with the repository's interpreter and nngeometry on PYTHONPATH (see _nngeometry_env.py),
one network and dtype per process, and prints one JSON line (see _measure.py). The network and
inputs are those of _empirical_nets.py, with the weights ntkit saved (--load DIR). nngeometry's
``GramMatrix`` gives all (output, example) pairs, (O, N, O, N); the kernel traced over the
logits is the mean of its diagonal output blocks, computed inside the timed call.

    PYTHONPATH=.venv-nngeometry .venv/bin/python benchmarks/peer_empirical_nngeometry.py \
        --model cnn --dtype float32 --load DIR
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from _empirical_nets import build
from _empirical_timing import timed
from _measure import peak_rss_mb, print_report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), required=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load", type=Path, required=True)
    parser.add_argument("--save-kernel", type=Path)
    args = parser.parse_args()

    import nngeometry
    from nngeometry import GramMatrix
    from nngeometry.object import FMatDense

    model, _ = build(args.model, args.dtype)
    weights = np.load(args.load / "weights.npz")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(weights[name]))
    x = torch.from_numpy(np.load(args.load / "x.npy")).to(getattr(torch, args.dtype))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=x.shape[0])
    result = {}
    baseline_mb = peak_rss_mb()

    def run():
        gram = GramMatrix(model, loader, representation=FMatDense).to_torch()  # (O, N, O, N)
        result["ntk"] = torch.einsum("oioj->ij", gram) / gram.shape[0]

    timings = timed(run, args.repeats)
    if args.save_kernel:
        np.save(args.save_kernel, result["ntk"].double().numpy())
    print_report(timings, library=f"nngeometry {getattr(nngeometry, '__version__', '0.4')}",
                 backend=f"torch {torch.__version__}", implementation="GramMatrix (torch hooks)", baseline_rss_mb=baseline_mb)


if __name__ == "__main__":
    main()
