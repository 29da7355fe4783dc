"""Run the arms a stopped comparison never ran, without NNI: replay its finished trials into a CompareTuner
with its own classArgs (what ``nnictl resume`` does), take the arms the tuner queues (exactly the missing
ones), run each as its trial would (``run_arm``), and append its row to ``OUT/results.csv`` as it lands.

For an experiment ``nni-splitting resume`` cannot continue: issue 25's seed-0 comparison ``tdawke6i``
(experiments/cifar_strong.yml) stopped before its step-3 Taylor, plain and from-scratch arms, and its
trial command names the module paths of before the package moved into folders
(``python -m nni_splitting.arms``), which no longer exist. Run from the repository root (the trials'
relative ``data_dir`` is relative to it), one torch thread::

    python experiments/finish_comparison.py tdawke6i --out results/cifar_strong/seed0_step3

Merge with the experiment's own rows: ``nni-splitting report --merge results/cifar_strong/seed0/results.csv
results/cifar_strong/seed0_step3/results.csv --out ...``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from nni_splitting.nni import report
from nni_splitting.nni.arms import resolve_arm_params, run_arm
from nni_splitting.nni.compare import CompareTuner


def missing_arms(trials, class_args) -> list:
    """The parameters of every arm the comparison still lacks, as its tuner would queue them after a resume."""
    tuner = CompareTuner(**class_args)
    tuner.end_hook = None
    tuner.import_data([{"parameter": t["parameters"], "value": t["result"], "trialJobId": t["id"]}
                       for t in trials if t["status"] == "SUCCEEDED" and isinstance(t["result"], dict)])
    queued = tuner.generate_multiple_parameters(list(range(10_000, 10_100)))
    growth = [p for p in queued if p.get("arm") == "splitting"]
    if growth:
        raise RuntimeError(f"the lineages are not finished ({len(growth)} growth step(s) queued): resume the "
                           f"experiment instead")
    return queued


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="id of the stopped comparison (read through nnictl view)")
    parser.add_argument("--out", required=True, help="folder of results.csv (rows appended as each arm ends)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these arm labels (default: all missing)")
    parser.add_argument("--dry-run", action="store_true", help="list the missing arms, run nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")
    trials, profile = report.read_experiment_trials(args.experiment)
    class_args = profile["params"]["tuner"]["classArgs"]
    todo = missing_arms(trials, class_args)
    labels = [p.get("arm_label") or p["arm"] for p in todo]
    print(f"{args.experiment}: {len(trials)} trials; missing arms: {labels}", flush=True)
    if args.dry_run:
        return 0
    out = Path(args.out)
    csv_path = out / "results.csv"
    rows = report.read_csv(csv_path) if csv_path.exists() else []
    done = {(r["arm"], int(r["step"])) for r in rows}
    for params in todo:
        label = params.get("arm_label") or params["arm"]
        if args.only and label not in args.only:
            continue
        resolved = resolve_arm_params(params)
        if (label, int(params["step"])) in done:
            print(f"{label} step {params['step']}: already in {csv_path}", flush=True)
            continue
        started = time.time()
        result = run_arm(resolved, out / params["node_id"], trial_id=params["node_id"], experiment_id=args.experiment)
        rows += report.rows_from_trials([{"id": params["node_id"], "status": "SUCCEEDED", "parameters": params,
                                          "result": result}], f"{args.experiment}+standalone")
        report.write_csv(rows, csv_path)
        print(f"{result['arm']} step {params['step']}: {result['test_accuracy']:.4f} at {result['params']} params "
              f"({time.time() - started:.0f} s); {csv_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
