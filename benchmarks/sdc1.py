"""SDC1 benchmark: YOLO-CIANNA (bundled model) vs PyBDSF on a simulated field not used in training or tuning.

Usage::

    python benchmarks/sdc1.py [--size 4096] [--seed 4242] [--out runs/sdc1/bench] [--only cianna|pybdsf]
                              [--threads 1] [--faint-sources] [--model M]

``--faint-sources`` simulates the field with the faint population of the official full truth
(``docs/sdc1.md`` §1.7), ``--dirty-psf`` with SDC1's dirty PSF below 8.6 uJy/beam (§1.8); use another ``--out``.

Each finder runs in its own child process (``python benchmarks/sdc1.py --child ...``) that records its wall
time and its own peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``); results are cached in
``OUT/result_<finder>.json`` so the two can be run at different times (``--only``) and then tabulated.
Scores: official ``ska-sdc`` scorer through :func:`cianna.scoring.sdc1.score_sdc1`, 560 MHz, mode 0 (core
positions), ``area="all"`` (the whole simulated field; it was not used for training, so the scorer's
training-box cut is irrelevant). Training fields use seeds 101–103, the validation field seed 201.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

TERMS = ("position", "flux", "b_maj", "b_min", "pa", "core_frac", "class_")


def _child(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    field = os.path.join(args.out, "field")
    image, pb, truth = (os.path.join(field, n) for n in ("image.fits", "pb.fits", "truth.txt"))
    cat_path = os.path.join(args.out, f"{args.child}_catalog.txt")
    t0 = time.perf_counter()
    if args.child == "cianna":
        from cianna.pipelines.sdc1.detect import detect_image, plot_detections, write_catalog

        cat = detect_image(image, pb=pb, model=args.model, progress=False, threads=args.threads)
        seconds = time.perf_counter() - t0
        write_catalog(cat, cat_path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        plot_detections(image, cat, os.path.join(args.out, "cianna_detections.png"))
    else:
        from cianna.pipelines.sdc1.baseline import run_baseline

        cat = run_baseline(image, pb=pb, out=cat_path, ncores=args.threads)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    from cianna.scoring.sdc1 import score_sdc1

    s = score_sdc1(cat_path, truth, area="all")
    res = {"finder": args.child, "seconds": seconds, "peak_rss_mb": peak, "cpu_s": time.process_time(),
           "score": s.to_dict(), "load_avg_end": os.getloadavg()}
    with open(os.path.join(args.out, f"result_{args.child}.json"), "w") as fh:
        json.dump(res, fh, indent=1, default=float)
    return 0


def _table(out: str, size: int, seed: int, faint: bool = False, dirty: bool = False) -> str:
    rows = {}
    for f in ("cianna", "pybdsf"):
        p = os.path.join(out, f"result_{f}.json")
        if os.path.exists(p):
            with open(p) as fh:
                rows[f] = json.load(fh)
    if not rows:
        return "no results"
    names = list(rows)
    sky = ("catalogue + faint population" if faint else "catalogue population") + (", dirty PSF" if dirty else "")
    lines = [f"Simulated {size}² field ({sky}), seed {seed}; " f"machine: {platform.machine()}, {os.cpu_count()} cores "
             f"(shared), python {platform.python_version()}", "",
             "| quantity | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(rows[n]) for n in names) + " |")

    row("score", lambda r: f"{r['score']['value']:.1f}")
    row("n_det", lambda r: str(r["score"]["n_det"]))
    row("n_match", lambda r: str(r["score"]["n_match"]))
    row("n_false", lambda r: str(r["score"]["n_false"]))
    row("n_truth", lambda r: str(r["score"]["n_truth"]))
    row("purity", lambda r: f"{r['score']['purity']:.4f}")
    row("completeness", lambda r: f"{r['score']['completeness']:.4f}")
    row("mean match score (%)", lambda r: f"{r['score']['acc_pc']:.1f}")
    for t in TERMS:
        row(f"term {t.rstrip('_')}", lambda r, t=t: f"{r['score'][t]:.3f}")
    row("wall time (s)", lambda r: f"{r['seconds']:.1f}")
    row("CPU time of the process (s)", lambda r: f"{r['cpu_s']:.1f}")
    row("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")
    row("load average at end (1 min)", lambda r: f"{r['load_avg_end'][0]:.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--out", default="runs/sdc1/bench")
    p.add_argument("--only", choices=("cianna", "pybdsf"), default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads / PyBDSF cores (default 1)")
    p.add_argument("--model", default=None, help="cianna model (default: bundled)")
    p.add_argument("--child", choices=("cianna", "pybdsf"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--table-only", action="store_true", help="print the table of cached results")
    p.add_argument("--faint-sources", action="store_true",
                   help="simulate the field with the faint population (docs/sdc1.md §1.7)")
    p.add_argument("--dirty-psf", action="store_true", help="simulate the field with the dirty PSF (§1.8)")
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    if not args.table_only:
        field = os.path.join(args.out, "field")
        if not os.path.exists(os.path.join(field, "truth.txt")):
            from cianna.sim.continuum import simulate_continuum_field

            simulate_continuum_field(field, size=args.size, seed=args.seed, faint_sources=args.faint_sources,
                                     dirty_psf=args.dirty_psf)
        for finder in ([args.only] if args.only else ["cianna", "pybdsf"]):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", finder, "--out", args.out,
                   "--threads", str(args.threads)] + (["--model", args.model] if args.model else [])
            subprocess.run(cmd, check=True)
    print(_table(args.out, args.size, args.seed, args.faint_sources, args.dirty_psf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
