"""Benchmark ntkit.predict against neural-tangents' nt.predict (closed-form ensemble training).

The foundation benchmark's network (3 hidden ReLU layers of width 512, W_std=1.5, b_std=0.05),
2000 training and 500 test inputs of dimension 784 (benchmarks/_inputs.py), 10 targets,
``gradient_descent_mse_ensemble(...)(x_test, get="ntk", compute_cov=True)``: the time of the
first call at t=None, kernels included, and of a second call at t = 1, 10, 100 on the same
predictor. For each dtype, runs ntkit_predict.py (this interpreter) and peer_predict.py (the
neural-tangents venv, see _peer_env.py), each in a fresh process so that peak RSS is per run;
checks that the two agree in float64; prints a markdown table and writes it between the
predict markers of benchmarks/README.md.

    .venv/bin/python benchmarks/bench_predict.py [--repeats 5] [--no-peer]
"""

import argparse
import datetime
import os
import sys
import tempfile

from _peer_env import neural_tangents_python, peer_env_vars
from _readme import README, update_section
from bench_mlp import cpu_model, fmt, run_json

DTYPES = ("float64", "float32")


def ratio(theirs, ours):
    return theirs / ours if theirs and ours else None


def render(rows, repeats, peer_note, agreement):
    """The markdown block for README.md; ``peer_note`` as in bench_mlp.render."""
    ours = next((r["ntkit"] for r in rows if r["ntkit"]), None)
    theirs = next((r["nt"] for r in rows if r["nt"]), None)
    libraries = [f"{x['library']} ({x['backend']})" for x in (ours, theirs) if x]
    threads = f", torch threads: {ours['torch_threads']}" if ours else ""
    missing = peer_note[0] if peer_note else "failed"
    lines = [
        "`gradient_descent_mse_ensemble` on the MLP above: 2000 training and 500 test inputs "
        "(dimension 784), 10 targets, `get=\"ntk\"`, `compute_cov=True`. *t=None*: a fresh "
        "predictor's first call, all kernels included; *t=1,10,100*: the second call on the same "
        "predictor (train-train kernel cached, eigendecomposition included).",
        "",
        f"Machine: {len(os.sched_getaffinity(0))} cores, {cpu_model()}{threads}. "
        f"Versions: {'; '.join(libraries) or 'none ran'}. Median of {repeats} runs after one "
        f"warm-up, {datetime.date.today().isoformat()}.",
        "",
        "| dtype | call | ntkit time (s) | NT time (s) | speed-up (NT/ntkit) "
        "| ntkit peak RSS (MB) | NT peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ntkit, nt = r["ntkit"] or {}, r["nt"] or {}
        for call, key in (("t=None", "median_s"), ("t=1,10,100", "median_t_s")):
            t_ours, t_theirs = ntkit.get(key), nt.get(key)
            lines.append(
                f"| {r['dtype']} | {call} | {fmt(t_ours, '.3g', 'failed')} "
                f"| {fmt(t_theirs, '.3g', missing)} | {fmt(ratio(t_theirs, t_ours), '.2f', 'n/a')} "
                f"| {fmt(ntkit.get('peak_rss_mb'), '.0f', 'failed')} "
                f"| {fmt(nt.get('peak_rss_mb'), '.0f', missing)} |"
            )
    lines.append("")
    if peer_note:
        lines.append(f"NT {peer_note[0]}: {peer_note[1]}.")
    elif agreement:
        lines.append(
            "Agreement in float64 (largest difference relative to each array's largest entry, "
            f"ntkit vs NT): mean {agreement['max_rel_mean_inf']:.1e} and covariance "
            f"{agreement['max_rel_cov_inf']:.1e} at t=None; mean {agreement['max_rel_mean_t']:.1e} "
            f"and covariance {agreement['max_rel_cov_t']:.1e} at t=1,10,100."
        )
    else:
        lines.append("Agreement: not checked, a run failed.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="run ntkit only")
    args = parser.parse_args()

    peer_python, peer_note = None, ("not run", "--no-peer was given")
    if not args.no_peer:
        peer_python = neural_tangents_python()
        peer_note = None if peer_python else (
            "unavailable", "its venv could not be built here, so only ntkit ran")

    rows, agreement = [], None
    for dtype in DTYPES:
        print(dtype, file=sys.stderr)
        options = dict(dtype=dtype, repeats=args.repeats)
        with tempfile.TemporaryDirectory() as peer_dir:
            nt = peer_python and run_json(
                peer_python, "peer_predict.py", env=peer_env_vars(),
                **options, **({"save": peer_dir} if dtype == "float64" else {}),
            )
            compare = {"compare": peer_dir} if nt and dtype == "float64" else {}
            ntkit = run_json(sys.executable, "ntkit_predict.py", **options, **compare)
        if compare and ntkit:
            agreement = ntkit
        rows.append(dict(dtype=dtype, ntkit=ntkit, nt=nt or None))

    block = render(rows, args.repeats, peer_note, agreement)
    print(block)
    update_section("predict", "Results: predict", block)
    print(f"updated {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
