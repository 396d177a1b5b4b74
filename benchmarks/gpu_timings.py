"""Time ntkit's kernels on a CUDA GPU: the same cases as the CPU benchmarks, one JSON line each.

The infinite-width MLP kernel (bench_mlp), Myrtle-5 (bench_cnn) and the empirical NTKs
(bench_empirical), with ``torch.cuda.synchronize`` around each call; the first call (CUDA
context, cuBLAS handles) is a warm-up and not counted. Peak GPU memory from
``torch.cuda.max_memory_allocated``. neural-tangents is not installed on the GPU machine
here, so this table has no peer column.

    python benchmarks/gpu_timings.py --out gpu.jsonl [--quick]     # on the GPU machine
    python benchmarks/gpu_timings.py --readme results/gpu_h200.jsonl  # here: the README table
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _empirical_nets import build as build_empirical  # noqa: E402
from _inputs import make_images, make_inputs  # noqa: E402
from _readme import update_section  # noqa: E402
from ntkit_cnn import myrtle5  # noqa: E402
from ntkit_mlp import build_network, nk  # noqa: E402

CUDA = torch.device("cuda")


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def mlp_cases(quick: bool):
    for n in (1000,) if quick else (1000, 4000, 16000):
        for dtype in ("float64", "float32"):
            x = torch.from_numpy(make_inputs(n, dtype)).to(CUDA)
            net = build_network()
            yield {"case": "mlp kernel", "n": n, "dtype": dtype,
                   **timed(lambda: net.kernel(x, dtype=getattr(torch, dtype), progress=False), 3)}


def myrtle_cases(quick: bool):
    sizes = ((8, 16),) if quick else ((8, 64), (8, 256), (32, 8), (32, 32))
    for size, n in sizes:
        for dtype in ("float64", "float32"):
            x = torch.from_numpy(make_images(n, size, dtype)).to(CUDA)
            net = myrtle5()
            result = timed(lambda: net.kernel(x, dtype=getattr(torch, dtype), progress=False), 2)
            entries = n * (n + 1) / 2
            yield {"case": "myrtle5 kernel", "size": size, "n": n, "dtype": dtype,
                   "ms_per_entry": 1e3 * result["median_s"] / entries, **result}


def empirical_cases(quick: bool):
    for model_name in ("mlp", "cnn") if quick else ("mlp", "cnn", "resnet18"):
        for dtype in ("float32", "float64"):
            model, x = build_empirical(model_name, dtype)
            model, x = model.to(CUDA), x.to(CUDA)
            for implementation in ("auto", "structured", "jacobian_contraction", "ntk_vector_products"):
                if model_name == "resnet18" and implementation != "auto":
                    continue
                try:
                    result = timed(lambda: nk.empirical_ntk(model, x, implementation=implementation), 3)
                except Exception as error:  # report and go on: one case must not hide the others
                    result = {"error": f"{type(error).__name__}: {error}"[:300]}
                yield {"case": "empirical ntk", "model": model_name, "dtype": dtype,
                       "implementation": implementation, **result}


def readme_section(rows: list[dict]) -> str:
    """The results table for benchmarks/README.md."""
    first = rows[0]
    lines = [
        f"Measured on one {first['device']} with torch {first['torch']} (`python benchmarks/gpu_timings.py`; "
        "median of 2-3 calls after a warm-up; peak memory from `torch.cuda.max_memory_allocated`). "
        "neural-tangents is not installed on that machine, so there is no peer column; the CPU "
        "tables above compare with it. Kernel blocks on a GPU are as large as the memory budget "
        "allows (up to 8192 examples a side; with the CPU's 512-example blocks the MLP at N=16000 "
        "took 1.02 s in float64, and Myrtle-5 at 32x32 3.7 ms per entry). For x2 = x1, image "
        "kernels are split into at least 4 blocks a side (mirroring then skips most of the lower "
        "triangle) but on a GPU never into blocks of fewer than 16M covariances: each block costs "
        "about 8 ms of host-side work (some 200 kernel launches and their Python) whatever its size (with 16x16-pair blocks, Myrtle-5 8x8 at "
        "N=64 took 81 ms instead of 9 ms; at 32x32, N=32, 8x8-pair blocks take 0.233 s against "
        "0.282 s in one block at the last GPU measurement).",
        "",
        "| case | size | dtype | time | per entry | peak GPU memory |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            continue
        if row["case"] == "mlp kernel":
            size, per_entry = f"N={row['n']}", ""
        elif row["case"] == "myrtle5 kernel":
            size, per_entry = f"{row['size']}x{row['size']}, N={row['n']}", f"{row['ms_per_entry']:.3g} ms"
        else:
            size, per_entry = f"{row['model']}, {row['implementation']}", ""
        lines.append(f"| {row['case']} | {size} | {row['dtype']} | {row['median_s']:.3g} s | {per_entry} | "
                     f"{row['peak_gpu_mb']:.0f} MB |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="write the README section from this .jsonl and stop")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("mlp", "myrtle", "empirical"))
    args = parser.parse_args()
    if args.readme:
        rows = [json.loads(line) for line in args.readme.read_text().splitlines() if line.strip()]
        update_section("gpu", "Results: GPU", readme_section(rows))
        return
    if args.out is None:
        parser.error("--out is required to measure")
    device = torch.cuda.get_device_name()
    groups = {"mlp": mlp_cases, "myrtle": myrtle_cases, "empirical": empirical_cases}
    with args.out.open("a") as out:
        for name, cases in groups.items():
            if args.only and name != args.only:
                continue
            for row in cases(args.quick):
                row = {"device": device, "torch": torch.__version__, **row}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
