"""Benchmark ntkit.empirical_ntk against neural-tangents' three implementations and nngeometry.

For each network and dtype (see _empirical_nets.py: the issue's width-512 MLP and width-64
CNN, a 16 x 16 kernel traced over the 10 logits), runs every measurement in a fresh process:
ntkit (ntkit_empirical.py, repository venv; each implementation, and ``empirical_ntk_fn``),
neural-tangents (peer_empirical_nt.py, its own venv; jacobian contraction, NTK-vector
products, structured derivatives, with ``vmap_axes=0``, and jacobian contraction and structured
derivatives with NT's default ``vmap_axes=None``) and nngeometry (peer_empirical_nngeometry.py, repository venv with
nngeometry on PYTHONPATH). All load the same weights and inputs, and their float64 kernels are
compared entry by entry. Then ntkit alone on a CIFAR ResNet-18 (64 x 64 kernel, float32).
Writes a markdown table between the empirical markers of benchmarks/README.md.

    .venv/bin/python benchmarks/bench_empirical.py [--repeats 5] [--no-peer] [--cases mlp:float32 ...]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _nngeometry_env import nngeometry_env
from _peer_env import neural_tangents_python, peer_env_vars
from _readme import README, update_section

BENCH_DIR = Path(__file__).resolve().parent
CASES = ("mlp:float32", "mlp:float64", "cnn:float32", "cnn:float64", "resnet18:float32")
NTKIT = ("auto", "structured", "jacobian_contraction", "ntk_vector_products")
NT = ((1, "0"), (2, "0"), (3, "0"), (1, "none"), (3, "none"))
NT_NAMES = {1: "JACOBIAN_CONTRACTION", 2: "NTK_VECTOR_PRODUCTS", 3: "STRUCTURED_DERIVATIVES"}
RUN_TIMEOUT_S = 1800


def run_json(cmd, env=None):
    """Run one measurement; its JSON line as a dict, or a dict with an 'error'."""
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=BENCH_DIR, env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {RUN_TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        print(f"  failed: {' '.join(map(str, cmd[1:3]))} ...: {tail}", file=sys.stderr)
        return {"error": f"failed (exit {proc.returncode})"}
    return json.loads(lines[-1])


def relative_difference(a: Path, b: Path):
    if not (a.is_file() and b.is_file()):
        return None
    x, y = np.load(a), np.load(b)
    return float(np.abs(x - y).max() / np.abs(y).max())


def measure_case(model, dtype, repeats, peer_python, nngeometry, workdir: Path):
    rows = []
    common = ["--model", model, "--dtype", dtype, "--repeats", repeats]
    ours = [sys.executable, "ntkit_empirical.py", *common]
    rows.append(("ntkit", "auto", run_json([*ours, "--implementation", "auto", "--save", workdir])))
    rows.append(("ntkit", "empirical_ntk_fn (auto)", run_json([*ours, "--implementation", "auto", "--fn"])))
    if model == "resnet18":
        return rows, {}
    for implementation in NTKIT[1:]:
        rows.append(("ntkit", implementation, run_json([*ours, "--implementation", implementation])))
    agreement = {}
    if peer_python:
        for implementation, vmap_axes in NT:
            kernel = workdir / f"nt{implementation}{vmap_axes}.npy"
            result = run_json([peer_python, "peer_empirical_nt.py", *common, "--implementation", implementation,
                               "--vmap-axes", vmap_axes, "--load", workdir, "--save-kernel", kernel],
                              env=peer_env_vars())
            name = NT_NAMES[implementation] + ("" if vmap_axes == "0" else " (vmap_axes=None)")
            rows.append(("neural-tangents", result.get("implementation", name), result))
            agreement[rows[-1][1]] = relative_difference(workdir / "ntk.npy", kernel)
    if nngeometry:
        kernel = workdir / "nngeometry.npy"
        result = run_json([sys.executable, "peer_empirical_nngeometry.py", *common, "--load", workdir,
                           "--save-kernel", kernel], env=nngeometry)
        rows.append(("nngeometry", "GramMatrix", result))
        agreement["nngeometry"] = relative_difference(workdir / "ntk.npy", kernel)
    return rows, agreement


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def render(results, repeats, notes):
    versions = sorted({r[2]["library"] + " (" + r[2]["backend"] + ")" for _, _, rows, _ in results
                       for r in rows if "library" in r[2]})
    threads = next((r[2]["torch_threads"] for _, _, rows, _ in results for r in rows if "torch_threads" in r[2]), "?")
    lines = [
        "## Results: empirical NTK",
        "",
        "`ntkit.empirical_ntk` on plain `torch.nn` networks (see `_empirical_nets.py`), against "
        "neural-tangents' `empirical_ntk_fn` (jitted) and nngeometry's `GramMatrix`, all on the same "
        "weights and inputs; `.venv/bin/python benchmarks/bench_empirical.py` rewrites this section. "
        "*Peak RSS* is the whole process (library import and, for NT, compilation included); *RSS growth* "
        "is the peak minus the RSS just before the first call.",
        "",
        f"Machine: {len(os.sched_getaffinity(0))} cores, {cpu_model()}, torch threads: {threads}. "
        f"Versions: {'; '.join(versions)}. Median of {repeats} calls after one warm-up call (one call when "
        f"the warm-up took over 20 s), {datetime.date.today().isoformat()}.",
        "",
        "| network | dtype | library | implementation | time (s) | vs ntkit auto | peak RSS (MB) | "
        "RSS growth in calls (MB) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    summary = []
    for model, dtype, rows, agreement in results:
        ours = next((r[2] for r in rows if r[1] == "auto" and "median_s" in r[2]), None)
        for library, implementation, r in rows:
            t = r.get("median_s")
            ratio = t / ours["median_s"] if t and ours else None
            growth = r["peak_rss_mb"] - r["baseline_rss_mb"] if "baseline_rss_mb" in r else None
            lines.append(
                f"| {model} | {dtype} | {library} | {implementation} | {fmt(t, '.3g', r.get('error', '—'))} "
                f"| {fmt(ratio, '.1f')}× | {fmt(r.get('peak_rss_mb'), '.0f')} | {fmt(growth, '.0f')} |"
            )
        peers = [r for r in rows if r[0] == "neural-tangents" and "median_s" in r[2]]
        if ours and peers:
            best = min(peers, key=lambda r: r[2]["median_s"])
            least = min(r[2]["peak_rss_mb"] for r in peers)
            summary.append(
                f"- {model} {dtype}: ntkit auto {ours['median_s']:.3g} s vs neural-tangents' best ({best[1]}) "
                f"{best[2]['median_s']:.3g} s: speed-up NT/ntkit **{best[2]['median_s'] / ours['median_s']:.2f}** "
                f"(above 1: ntkit faster); peak RSS {ours['peak_rss_mb']:.0f} MB vs {least:.0f} MB (NT's "
                f"smallest): ntkit/NT **{ours['peak_rss_mb'] / least:.2f}**."
            )
        defaults = [r for r in peers if r[1].endswith("(vmap_axes=None)")]
        if ours and defaults:
            best = min(defaults, key=lambda r: r[2]["median_s"])
            summary.append(
                f"  Against NT's default `vmap_axes=None` (the setting of the issue's figures), its best is "
                f"{best[1]} {best[2]['median_s']:.3g} s: speed-up **{best[2]['median_s'] / ours['median_s']:.2f}**; "
                f"peak RSS ntkit/NT **{ours['peak_rss_mb'] / best[2]['peak_rss_mb']:.2f}**."
            )
        elif ours and any(r[0] == "neural-tangents" for r in rows):
            summary.append(f"- {model} {dtype}: no neural-tangents measurement finished.")
        elif ours:
            summary.append(f"- {model} {dtype}: ntkit only (the peers are not run on this network): "
                           f"{ours['median_s']:.3g} s, peak RSS {ours['peak_rss_mb']:.0f} MB.")
        if agreement:
            parts = ", ".join(f"{k} {fmt(v, '.1e', 'n/a')}" for k, v in agreement.items())
            summary.append(f"  Max relative difference from ntkit's kernel ({dtype}): {parts}.")
    lines += ["", *summary]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="ntkit only")
    parser.add_argument("--cases", nargs="+", default=list(CASES), help="network:dtype pairs")
    parser.add_argument("--note", action="append", default=[], help="a line to add under the table")
    args = parser.parse_args()

    notes = list(args.note)
    peer_python = nngeometry = None
    if not args.no_peer:
        peer_python = neural_tangents_python()
        nngeometry = nngeometry_env()
        if not peer_python:
            notes.append("neural-tangents could not be set up here (see _peer_env.py): not measured.")
        if not nngeometry:
            notes.append("nngeometry could not be installed here (see _nngeometry_env.py): not measured.")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            model, dtype = case.split(":")
            print(f"{model} {dtype}", file=sys.stderr)
            workdir = Path(tmp) / case.replace(":", "-")
            rows, agreement = measure_case(model, dtype, args.repeats, peer_python, nngeometry, workdir)
            results.append((model, dtype, rows, agreement))
    block = render(results, args.repeats, notes)
    print(block)
    update_section("empirical", "Results: empirical NTK", block)
    print(f"updated {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
