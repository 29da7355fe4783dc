"""Width search baselines: the ``width`` arm's parameter budget and validation objective, and a real
``nni.nas`` multi-trial experiment (``nni-splitting nas``) read into the comparison's report.
About 1 minute on 2 CPU cores (the NAS experiment: 4 digits samples of 1 epoch)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

import nni_helpers as ex
from nni_splitting.nni.arms import _resolve, run_arm
from nni_splitting.nni.nas import make_strategy, run_nas_width_search

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nni_splitting", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ex.venv_env())


def test_width_arm_reports_validation_accuracy_as_default(tmp_path):
    params = _resolve({"mult_0": 0.25, "mult_1": 0.25, "mult_2": 0.25},
                      {"arm": "width", "epochs": 1, "num_threads": 1, "arm_label": "hpo_tpe"})
    result = run_arm(params, tmp_path)
    assert result["arm"] == "hpo_tpe" and result["method"] == "width_search"
    assert result["default"] == result["val_accuracy"]  # what a search tuner maximises: never the test set
    assert 0 <= result["test_accuracy"] <= 1 and result["epochs"] == 1.0 and result["widths"] == "8,16,32"


def test_width_arm_budget_skips_training(tmp_path):
    params = _resolve({"widths": [32, 64, 128]}, {"arm": "width", "epochs": 5, "max_params_ratio": 0.05})
    result = run_arm(params, tmp_path)
    assert result["over_budget"] == 1 and result["default"] == 0.0 and result["epochs"] == 0.0
    assert result["test_accuracy"] is None and result["params_ratio"] == pytest.approx(1.0)
    for bad in (0, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="max_params_ratio"):
            _resolve({"arm": "width", "max_params_ratio": bad})


def test_bad_nas_arguments_are_refused():
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("darts")
    with pytest.raises(ValueError, match="max_trials"):
        run_nas_width_search(max_trials=0)
    with pytest.raises(ValueError, match="max_params_ratio"):
        run_nas_width_search(max_params_ratio=2.0)
    proc = _cli("nas", "--settings", "[1, 2]")
    assert proc.returncode == 2 and "JSON object" in proc.stderr


def test_nni_nas_search_runs_and_merges_into_the_report(tmp_path):
    out = tmp_path / "nas"
    port = ex.free_port(8750)
    grow = tmp_path / "grow.yml"
    proc = _cli("nas", "--strategy", "random", "--trials", "4", "--max-params-ratio", "0.2", "--port", str(port),
                "--settings", '{"dataset": "digits", "epochs": 1, "num_threads": 1}', "--out", str(out),
                "--grow-config", str(grow))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment_id = proc.stdout.split("experiment ")[1].split()[0]
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {r["experiment_id"] for r in rows} == {experiment_id}
    assert {r["arm"] for r in rows} == {"nas_random"} and {r["method"] for r in rows} == {"width_search"}
    for row in rows:  # trained samples are within the budget; over-budget ones have no accuracy
        assert (row["accuracy"] != "") == (float(row["params_ratio"]) <= 0.2)
    merged = tmp_path / "merged"
    proc = _cli("report", "--merge", str(out / "results.csv"), "--out", str(merged))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (merged / "compare.png").exists() and len(list(csv.DictReader(open(merged / "results.csv")))) == 4
    # NNI 3.0 cannot serve the stopped NAS experiment again: the report says what to do instead
    proc = _cli("report", experiment_id, "--out", str(tmp_path / "viewed"))
    assert proc.returncode == 1 and "--merge" in proc.stderr

    # the pipeline (issue 27): the search's top model (best validation accuracy) seeds a growth experiment
    trained = [r for r in rows if r["val_accuracy"]]
    top = max(trained, key=lambda r: float(r["val_accuracy"]))
    config = ex.load_config(grow)
    assert config["tuner"]["classArgs"]["seed_widths"] == [int(w) for w in top["widths"].split(",")]
    config["experimentWorkingDirectory"] = str(tmp_path / "nni")
    config["tuner"]["classArgs"].update(max_steps=1)
    config["tuner"]["classArgs"]["trial"].update(epochs=1, split_batches=2)
    short = ex.write_config(config, tmp_path / "grow-short.yml")
    growth_port = ex.free_port(port + 10)
    proc = _cli("run", "--config", str(short), "--port", str(growth_port), "--timeout", "400")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    growth_id = proc.stdout.split("experiment ")[1].split()[0]
    both = tmp_path / "both"
    proc = _cli("report", growth_id, "--merge", str(out / "results.csv"), "--out", str(both),
                "--workdir", str(tmp_path / "nni"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    merged_rows = list(csv.DictReader(open(both / "results.csv")))
    assert {r["arm"] for r in merged_rows} == {"splitting", "nas_random"}
    seed = next(r for r in merged_rows if r["arm"] == "splitting" and r["step"] == "0")
    assert seed["widths"] == top["widths"]  # the growth started from the exported top model
