"""Rerun one growth step of a comparison with settings changed: a lever's ablation from the very same parent.

Reads the trial's parameters from NNI's records (its experiment running, or served by ``nnictl view``),
applies ``--set key=value`` (JSON values; e.g. ``depth_layers=0``), runs the step as its trial would
(``run_arm``: the parent checkpoint, its split plan, then training) and appends the row, labelled
``--label``, to ``OUT/results.csv``. The parent and the width plan are the recorded ones, so only the
changed settings differ. Run from the repository root (relative ``data_dir``), one torch thread::

    python experiments/rerun_step.py 3jmfp9nc <trial id> --set depth_layers=0 --label firefly_depth0 \\
        --out results/cifar_strong/depth_rerun
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nni_splitting.nni import report
from nni_splitting.nni.arms import resolve_arm_params, run_arm


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("trial", help="NNI trial id of the growth step to rerun")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON", help="settings to change")
    parser.add_argument("--label", required=True, help="arm label of the rerun's row")
    parser.add_argument("--out", required=True, help="folder of results.csv (the row is appended)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")
    trials, _ = report.read_experiment_trials(args.experiment)
    trial = next((t for t in trials if t["id"] == args.trial), None)
    if trial is None or not trial["parameters"].get("parent_checkpoint"):
        print(f"{args.experiment} has no growth step {args.trial} (a trial with a parent checkpoint)", file=sys.stderr)
        return 2
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = json.loads(value)
    node_id = f"{trial['parameters']['node_id']}-{args.label}"
    params = dict(trial["parameters"], **changes, arm_label=args.label, node_id=node_id)
    out = Path(args.out)
    result = run_arm(resolve_arm_params(params), out / node_id, trial_id=node_id, experiment_id=args.experiment)
    csv_path = out / "results.csv"
    rows = report.read_csv(csv_path) if csv_path.exists() else []
    rows += report.rows_from_trials([{"id": node_id, "status": "SUCCEEDED", "parameters": params, "result": result}],
                                    f"{args.experiment}+rerun")
    report.write_csv(rows, csv_path)
    print(f"{args.label}: {result['test_accuracy']:.4f} at {result['params']} params; {csv_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
