"""Benchmark ntkit's Myrtle-5 CNTK against neural-tangents, per kernel entry.

For each image size and dtype, runs ntkit_cnn.py (this interpreter) and peer_cnn.py (the
neural-tangents venv, see _peer_env.py) in fresh processes on the same N images, checks that
the two agree in float64, and writes a markdown table between the cnn markers of
benchmarks/README.md. Time per entry is the median time of ``kernel(x)`` (NNGP and NTK
together) divided by N^2, the number of entries of the kernel (ntkit computes the N(N+1)/2
distinct ones; whether NT exploits the symmetry is its own business). The two libraries run in
alternation, ``--rounds`` times each, and the median is taken over the calls of all rounds: on
this shared machine the speed drifts by 30% over minutes, which one run of each would read as a
difference between the libraries.

    .venv/bin/python benchmarks/bench_cnn.py [--repeats 3] [--rounds 3] [--no-peer]
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile

from _peer_env import neural_tangents_python, peer_env_vars
from _readme import README, update_section
from bench_mlp import cpu_model, fmt, run_json

#: (image size, N): N chosen so that neural-tangents' call takes about a second.
CASES = ((8, 32), (32, 2))
DTYPES = ("float64", "float32")


def render(rows, repeats, rounds, peer_note):
    ours = next((r["ntkit"] for r in rows if r["ntkit"]), None)
    theirs = next((r["nt"] for r in rows if r["nt"]), None)
    libraries = [f"{x['library']} ({x['backend']})" for x in (ours, theirs) if x]
    threads = f", torch threads: {ours['torch_threads']}" if ours else ""
    missing = peer_note[0] if peer_note else "failed"
    lines = [
        "Myrtle-5 NTK and NNGP (Conv 3x3 `same` W_std=sqrt 2 no bias + ReLU, x2, AvgPool 2x2, "
        "Conv + ReLU, AvgPool 2x2, Conv + ReLU, GlobalAvgPool, Dense(10)) of N random 3-channel "
        "images; time per entry = median time of one `kernel(x)` call / N^2.",
        "",
        f"Machine: {len(os.sched_getaffinity(0))} cores, {cpu_model()}{threads}. "
        f"Versions: {'; '.join(libraries) or 'none ran'}. Median of {repeats} calls after one "
        f"warm-up in each of {rounds} rounds (fresh processes, the libraries in alternation), "
        f"{datetime.date.today().isoformat()}.",
        "",
        "| image | N | dtype | ntkit ms/entry | NT ms/entry | speed-up (NT/ntkit) | ntkit peak RSS (MB) "
        "| NT peak RSS (MB) | max rel. difference NNGP / NTK |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ntkit, nt = r["ntkit"] or {}, r["nt"] or {}
        entries = r["n"] ** 2
        t_ours = ntkit.get("median_s") and 1e3 * ntkit["median_s"] / entries
        t_theirs = nt.get("median_s") and 1e3 * nt["median_s"] / entries
        speedup = t_theirs / t_ours if t_ours and t_theirs else None
        agreement = (
            f"{ntkit['max_rel_nngp']:.1e} / {ntkit['max_rel_ntk']:.1e}" if "max_rel_nngp" in ntkit else "—"
        )
        lines.append(
            f"| {r['size']}x{r['size']} | {r['n']} | {r['dtype']} | {fmt(t_ours, '.3g', 'failed')} "
            f"| {fmt(t_theirs, '.3g', missing)} | {fmt(speedup, '.2f', 'n/a')} "
            f"| {fmt(ntkit.get('peak_rss_mb'), '.0f', 'failed')} | {fmt(nt.get('peak_rss_mb'), '.0f', missing)} "
            f"| {agreement} |"
        )
    if peer_note:
        lines += ["", f"NT {peer_note[0]}: {peer_note[1]}."]
    lines += ["", ARITHMETIC_LIMIT]
    return "\n".join(lines)


#: Operations per kernel entry of Myrtle-5 at 32x32, counted from the kernel maps, and their measured cost.
ARITHMETIC_LIMIT = (
    "How far from the limits (32x32, per entry = per pair of images): the two 32x32 Conv+ReLU "
    "layers each hold (32*32)^2 = 1.05M covariances, the 16x16 and 8x8 ones 66k and 4k, for both "
    "the NNGP and the NTK. The first Conv is a product of image patches (1024 x 27 by 27 x 1024, "
    "57 MFLOP by BLAS, about 2 ms per pair); the second 3x3 Conv is 8 adds per covariance for each "
    "kernel and an affine map (two products by the reciprocal of the window size); the ReLU dual "
    "about 12 flops, a division and two square roots. Measured on one core, per covariance of the "
    "second layer, in its compiled pass (`ntkit._compiled.fused`, taking each part out in turn): "
    "nine-tap sums 1.2 ns per kernel; the affine map 2.6 ns while it divided each entry by the "
    "window size, about 1.3 ns since; the ReLU dual 2.7 ns; the 2x2 pooling of the second image's "
    "axes 2.5 ns in four strided passes, about 0.4 ns since it sums adjacent pairs in one pass; the "
    "first layer's affine map and ReLU, applied as the second Conv loads its planes, about 4 ns. "
    "That is about 11 ns per covariance, 12 ms per pair of images computed, and for x2 = x1 a block "
    "computes 3 pairs per 4 entries (i <= j): about 9 ms of CPU time per entry plus the patches "
    "(1.5 ms), against 13.3 ms measured single-threaded. No block of the first ReLU's output is "
    "written, and the other planes stay in cache: the rest is arithmetic, of which the ReLU's "
    "division and square roots (about 4 ns of the 11, in both layers) are the floor. The two vCPUs "
    "act as hyperthreads of one core (a second thread adds at most about 1.3x), so about 10 ms per "
    "entry is what this machine allows; 10x neural-tangents (its 142-209 ms in different runs here) "
    "asks for 14-21 ms. At 8x8 (N=32, one block: 528 pairs) the single-threaded CPU time is about "
    "0.065 ms per entry. On a GPU (see Results: GPU) the torch form takes 0.41 ms per entry."
)


def pooled(results):
    """One library's rounds as one result: the median over every call of the rounds, the largest
    peak RSS, the first round's other fields; None when a round failed."""
    if not results or not all(results):
        return None
    times = sorted(t for r in results for t in r["times"])
    return {**results[0], "median_s": statistics.median(times), "times": times,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each library per case")
    parser.add_argument("--no-peer", action="store_true", help="run ntkit only")
    args = parser.parse_args()

    peer_python, peer_note = None, ("not run", "--no-peer was given")
    if not args.no_peer:
        peer_python = neural_tangents_python()
        peer_note = None if peer_python else ("unavailable", "its venv could not be built here")

    rows = []
    for size, n in CASES:
        for dtype in DTYPES:
            print(f"{size}x{size} {dtype}", file=sys.stderr)
            options = dict(size=size, n=n, dtype=dtype, repeats=args.repeats)
            ours, theirs = [], []
            for round_ in range(args.rounds):
                with tempfile.TemporaryDirectory() as peer_dir:
                    save = {"save": peer_dir} if dtype == "float64" and round_ == 0 else {}
                    nt = peer_python and run_json(peer_python, "peer_cnn.py", env=peer_env_vars(), **options, **save)
                    compare = {"compare": peer_dir} if nt and save else {}
                    theirs.append(nt)
                    ours.append(run_json(sys.executable, "ntkit_cnn.py", **options, **compare))
            rows.append(dict(size=size, n=n, dtype=dtype, ntkit=pooled(ours), nt=pooled(theirs)))

    block = render(rows, args.repeats, args.rounds, peer_note)
    print(block)
    update_section("cnn", "Results: CNN (Myrtle-5)", block)
    print(f"updated {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
