"""Benchmark ntkit against neural-tangents on a ReLU MLP's NNGP and NTK.

For each size and dtype, runs ntkit_mlp.py (with this interpreter, the
repository venv) and peer_mlp.py (in the neural-tangents venv, see
_peer_env.py), each in a fresh process so that peak RSS is per run. Then
checks that the two libraries agree in float64 at a small N, prints a
markdown table and writes it between the mlp markers of benchmarks/README.md.

    .venv/bin/python benchmarks/bench_mlp.py [--sizes 1000 2000 4000]
        [--repeats 5] [--no-peer]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _peer_env import neural_tangents_python, peer_env_vars
from _readme import README, update_section

BENCH_DIR = Path(__file__).resolve().parent
DTYPES = ("float64", "float32")
AGREEMENT_N = 300
RUN_TIMEOUT_S = 1800


def run_json(python, script, env=None, **options):
    """Run a benchmark script; return its JSON line as a dict, or None."""
    cmd = [str(python), str(BENCH_DIR / script)]
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    try:
        proc = subprocess.run(cmd, cwd=BENCH_DIR, env=env, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"  {script} timed out after {RUN_TIMEOUT_S} s", file=sys.stderr)
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        print(f"  {script} failed (exit {proc.returncode}): {tail}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def check_agreement(peer_python):
    """Max relative differences ntkit vs neural-tangents at AGREEMENT_N, float64."""
    with tempfile.TemporaryDirectory() as ref_dir:
        common = dict(n=AGREEMENT_N, dtype="float64", repeats=0)
        if run_json(peer_python, "peer_mlp.py", env=peer_env_vars(), save=ref_dir, **common):
            return run_json(sys.executable, "ntkit_mlp.py", compare=ref_dir, **common)
    return None


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or 'unknown CPU'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def fmt(value, spec, missing):
    """``value`` formatted with ``spec``, or ``missing`` when it is None."""
    return missing if value is None else format(value, spec)


def render(rows, repeats, peer_note, agreement):
    """The markdown block (machine, table, agreement) for README.md.

    ``peer_note`` is None when NT ran, else (short cell text, explanation).
    """
    ours = next((r["ntkit"] for r in rows if r["ntkit"]), None)
    theirs = next((r["nt"] for r in rows if r["nt"]), None)
    libraries = [f"{x['library']} ({x['backend']})" for x in (ours, theirs) if x]
    threads = f", torch threads: {ours['torch_threads']}" if ours else ""
    lines = [
        f"Machine: {len(os.sched_getaffinity(0))} cores, {cpu_model()}{threads}. "
        f"Versions: {'; '.join(libraries) or 'none ran'}. Median of {repeats} runs "
        f"after one warm-up, {datetime.date.today().isoformat()}.",
        "",
        "| N | dtype | ntkit time (s) | NT time (s) | speed-up (NT/ntkit) "
        "| ntkit peak RSS (MB) | NT peak RSS (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ntkit, nt = r["ntkit"] or {}, r["nt"] or {}
        nt_missing = peer_note[0] if peer_note else "failed"
        t_ours, t_theirs = ntkit.get("median_s"), nt.get("median_s")
        speedup = t_theirs / t_ours if t_ours and t_theirs else None
        lines.append(
            f"| {r['n']} | {r['dtype']} | {fmt(t_ours, '.3g', 'failed')} "
            f"| {fmt(t_theirs, '.3g', nt_missing)} | {fmt(speedup, '.2f', 'n/a')} "
            f"| {fmt(ntkit.get('peak_rss_mb'), '.0f', 'failed')} "
            f"| {fmt(nt.get('peak_rss_mb'), '.0f', nt_missing)} |"
        )
    lines.append("")
    if peer_note:
        lines.append(f"NT {peer_note[0]}: {peer_note[1]}.")
    elif agreement:
        lines.append(
            f"Agreement at N={AGREEMENT_N}, float64 (max elementwise relative "
            f"difference, ntkit vs NT): NNGP {agreement['max_rel_nngp']:.2e}, "
            f"NTK {agreement['max_rel_ntk']:.2e}."
        )
    else:
        lines.append(f"Agreement at N={AGREEMENT_N}: not checked, a run failed.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="run ntkit only")
    args = parser.parse_args()

    peer_python, peer_note = None, ("not run", "--no-peer was given")
    if not args.no_peer:
        peer_python = neural_tangents_python()
        peer_note = None if peer_python else (
            "unavailable", "its venv could not be built here, so only ntkit ran")

    rows = []
    for n in args.sizes:
        for dtype in DTYPES:
            print(f"N={n} {dtype}", file=sys.stderr)
            options = dict(n=n, dtype=dtype, repeats=args.repeats)
            ntkit = run_json(sys.executable, "ntkit_mlp.py", **options)
            nt = peer_python and run_json(peer_python, "peer_mlp.py", env=peer_env_vars(), **options)
            rows.append(dict(n=n, dtype=dtype, ntkit=ntkit, nt=nt or None))

    agreement = check_agreement(peer_python) if peer_python else None
    block = render(rows, args.repeats, peer_note, agreement)
    print(block)
    update_section("mlp", "Results: MLP", block)
    print(f"updated {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
