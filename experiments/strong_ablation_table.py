"""The ablation table of issue 25: each growth lever, from the strong seed, against the seed-0 baselines.

    python experiments/strong_ablation_table.py results/cifar_strong/seed0/results.csv \
        results/cifar_strong/ablation/results.csv > results/cifar_strong/ablation/ablation.md

Rows: the Firefly lineage of ``cifar_strong.yml`` (the reference configuration) and every lineage of
``cifar_strong_ablation.yml`` (one lever each), at each growth step they reached. Columns: parameters and
FLOPs (NNI's counter), test accuracy, the change against Firefly at the same step, the best baseline
within 10 % of its parameters (pruners and plain networks, seed 0) and the margin to it, and the margin
to the baselines' accuracy-vs-FLOPs front at its FLOPs (interpolated in log FLOPs; the claim rule of
:mod:`nni_splitting.nni.claims`; a width search counts with its pick by validation accuracy), and the lever's
architecture retrained from scratch for one round where it was measured (``<lever>_scratch``).

    python experiments/strong_ablation_table.py results/cifar_strong/seed0/results.csv \
        results/cifar_strong/ablation/results.csv results/cifar_strong/depth/results.csv
"""
from __future__ import annotations

import argparse
import csv
from typing import Dict, List, Optional

from nni_splitting.nni.claims import BASELINE_METHODS, baseline_front, front_accuracy, search_pick
from nni_splitting.nni.summary import number

LEVERS = {
    "firefly": "Firefly, lowest 45 % of the scores (the reference: cifar_strong.yml)",
    "s2d": "S2D: splitting indexes, lowest 45 % split (the paper)",
    "s3d": "S3D: signed splits, lowest 45 % of the best scheme's index",
    "firefly_per_flop": "Firefly ranked per added FLOP (selection negative, cost flops)",
    "firefly_energy": "Firefly, energy-aware LP spending the count rule's FLOPs",
    "firefly_depth0": "Firefly, the code of the depth levers with depth_layers 0 (their reference)",
    "firefly_depth1": "Firefly + depth growth: one identity-initialised block per step (depth_layers 1)",
    "firefly_depth2": "Firefly + depth growth: two identity-initialised blocks per step (depth_layers 2)",
    "firefly_depth1_score": "Firefly + depth growth: one block where the loss falls most (depth_cost none)",
}


def read(paths: List[str]) -> List[Dict[str, str]]:
    rows: List[Dict[str, str]] = []
    for path in paths:
        with open(path, newline="") as handle:
            rows.extend(r for r in csv.DictReader(handle) if r.get("status", "SUCCEEDED") == "SUCCEEDED")
    return rows


def best_baseline(rows, params: float, tolerance: float = 0.1) -> Optional[Dict[str, str]]:
    """The most accurate baseline within ``tolerance`` of ``params``; a width search counts with its pick by
    validation accuracy under that budget (never its best test accuracy)."""
    near = [r for r in rows if r["method"] in BASELINE_METHODS and r["method"] != "width_search"
            and abs(number(r["params"]) / params - 1) <= tolerance]
    near += [pick for pick in (search_pick(rows, arm, params * (1 + tolerance))
                               for arm in sorted({r["arm"] for r in rows if r["method"] == "width_search"}))
             if pick is not None]
    return max(near, key=lambda r: number(r["accuracy"]), default=None)


def table(rows: List[Dict[str, str]], seed: str = "0") -> str:
    rows = [r for r in rows if str(r.get("seed", seed)) == seed]
    front = baseline_front(rows)
    growth = [r for r in rows if r["method"] == "splitting" and r["arm"] in LEVERS and int(r["step"]) > 0]
    reference = {int(r["step"]): number(r["accuracy"]) for r in growth if r["arm"] == "firefly"}
    scratch = {(r["arm"], int(r["step"])): number(r["accuracy"]) for r in rows if r["arm"].endswith("_scratch")}
    lines = ["| lever | step | params (% of full) | MFLOPs | test acc. (%) | vs Firefly (pt) | best baseline "
             "within 10 % params | vs it (pt) | vs FLOPs front (pt) | its architecture from scratch (%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(growth, key=lambda r: (list(LEVERS).index(r["arm"]), int(r["step"]))):
        step, accuracy, flops = int(row["step"]), number(row["accuracy"]), number(row["flops"])
        rival = best_baseline(rows, number(row["params"]))
        at_front = front_accuracy(front, flops)
        versus = "" if row["arm"] == "firefly" or step not in reference else f"{100 * (accuracy - reference[step]):+.1f}"
        rival_text, rival_margin = "none measured", ""
        if rival is not None:
            rival_accuracy = number(rival["accuracy"])
            rival_text = f"{rival['arm']} {100 * rival_accuracy:.2f}"
            rival_margin = f"{100 * (accuracy - rival_accuracy):+.1f}"
        front_margin = "below the cheapest" if at_front is None else f"{100 * (accuracy - at_front):+.1f}"
        params = int(number(row["params"]))
        lines.append(f"| {LEVERS[row['arm']]} | {step} | {params:,} ({100 * number(row['params_ratio']):.1f} %) "
                     f"| {flops / 1e6:.2f} | {100 * accuracy:.2f} | {versus} | {rival_text} | {rival_margin} "
                     f"| {front_margin} | {_percent(scratch.get((row['arm'] + '_scratch', step)))} |")
    return "\n".join(lines)


def _percent(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="results.csv files (the seed-0 comparison and the ablation)")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()
    print(table(read(args.csv), args.seed))


if __name__ == "__main__":
    main()
