"""Leave-one-cube-out check of the SDC2 reliability cut against a plain score threshold.

    python benchmarks/sdc2_reliability.py --cubes runs/sdc2/data/valid* [--model M] [--min-purity 0.93 0.95]

For every validation cube (a folder with ``cube.fits`` and ``truth.txt``), the model's candidates above a base
score threshold are labelled by the official SDC2 scorer (matched or not). Then, for each cube in turn, a model
is fitted on the other cubes and its operating point chosen there (best ``0.8 n_match - n_false`` at a pooled
purity >= the floor), and applied to the held-out cube. Two models are compared: the score alone (a plain score
threshold) and the reliability model (score, line flux, size, w20). The table gives, per floor, the held-out
detections, matches and purity summed over the cubes, and the worst single cube. Candidates are cached in
``--cache`` (delete it after changing the model).
"""
from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
from dataclasses import replace

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cubes", nargs="+", required=True, help="folders with cube.fits and truth.txt")
    p.add_argument("--model", default=None, help="detector model (default: the packaged one)")
    p.add_argument("--base-threshold", type=float, default=0.2)
    p.add_argument("--min-purity", type=float, nargs="+", default=[0.93, 0.95])
    p.add_argument("--cache", default="runs/sdc2/rel")
    args = p.parse_args(argv)

    import torch

    from cianna.pipelines.sdc2.detect import candidates_to_catalog, detect_candidates, load_model
    from cianna.pipelines.sdc2.reliability import RELIABILITY_FEATURES, leave_one_out, match_labels

    torch.set_num_threads(1)
    model = load_model(args.model)
    os.makedirs(args.cache, exist_ok=True)
    tables, labels, names = [], [], []
    for folder in args.cubes:
        name = os.path.basename(os.path.normpath(folder))
        cache = os.path.join(args.cache, f"cand_{name}.pkl")
        cube = os.path.join(folder, "cube.fits")
        if os.path.exists(cache):
            with open(cache, "rb") as fh:
                cand = pickle.load(fh)
        else:
            cand = detect_candidates(cube, model=model, settings=replace(model[2], pre_threshold=0.05),
                                     progress=False)
            with open(cache, "wb") as fh:
                pickle.dump(cand, fh)
        # the stored settings supply NMS and calibration; no reliability cut, no (slow) kinematic PA here
        cand = dict(cand, settings=replace(model[2], pa_mode="network", reliability={}))
        t = candidates_to_catalog(cube, cand, threshold=args.base_threshold)
        tables.append(t)
        labels.append(match_labels(t, os.path.join(folder, "truth.txt")))
        names.append(name)
    print(f"{len(tables)} validation cubes ({', '.join(names)}), {sum(len(t) for t in tables)} candidates above "
          f"score {args.base_threshold}; machine {platform.machine()}, Python {platform.python_version()}\n")
    print("| purity floor | ranking | held-out N_det | N_match | N_false | pooled purity | worst cube | "
          "cubes < 0.92 | 0.8 N_match - N_false |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for floor in args.min_purity:
        for label, feats in (("score threshold", ("score",)), ("reliability", RELIABILITY_FEATURES)):
            loo = leave_one_out(tables, labels, min_purity=floor, features=feats)
            n = sum(d["n_det"] for d in loo)
            m = sum(d["n_match"] for d in loo)
            pur = np.array([d["purity"] for d in loo])
            print(f"| {floor:.2f} | {label} | {n} | {m} | {n - m} | {m / n:.3f} | {np.nanmin(pur):.3f} | "
                  f"{int(np.sum(pur < 0.92))} | {0.8 * m - (n - m):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
