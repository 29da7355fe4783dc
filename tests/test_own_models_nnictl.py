"""The user's own seed through nnictl (issue 27): a factory model on the user's own data, torchvision's
resnet18 (with nnictl stop / resume) and mobilenet_v2 on a CIFAR-10 subset, at a tiny budget and
``epsilon: 0`` so that every growth step must preserve the function; bad seeds fail at start.

Each experiment is stopped by id in a ``finally``; about 6-8 minutes on 2 CPU cores in all.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nni_helpers as ex
from nni_splitting.nni import nnictl

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "nni_splitting", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ex.venv_env())


def _config(tmp_path, name, class_args=None, trial=None):
    config = ex.load_config(ROOT / "experiments" / name)
    config["experimentWorkingDirectory"] = str(tmp_path / "nni")
    config["maxExperimentDuration"] = "15m"
    config["tuner"]["classArgs"].update(class_args or {})
    config["tuner"]["classArgs"]["trial"].update(trial or {})
    return ex.write_config(config, tmp_path / name)


def _check_growth(trials, steps):
    """Every step once, each grown network larger than its parent and, at epsilon 0, the same function."""
    done = sorted((t["result"] for t in trials if t["status"] == "SUCCEEDED"), key=lambda r: r["step"])
    assert [r["step"] for r in done] == list(range(steps + 1)), [(t["status"], t.get("result")) for t in trials]
    for parent, child in zip(done, done[1:]):
        assert child["params"] > parent["params"] and child["n_split"] > 0
        assert child["growth_change"] is not None and child["growth_change"] < 1e-4, child
    return done


def test_own_model_on_own_data_grows_through_nnictl(tmp_path):
    path = _config(tmp_path, "own_model_digits.yml", {"max_steps": 2, "epsilon": 0.0}, {"epochs": 2})
    port = ex.free_port(start=24000 + os.getpid() % 20000)
    experiment_id = None
    try:
        proc = _cli("run", "--config", str(path), "--port", str(port), "--keep", "--timeout", "600")
        output = proc.stdout + proc.stderr
        match = re.search(r"experiment (\w+) started", output)
        experiment_id = match.group(1) if match else None
        assert proc.returncode == 0, output[-3000:]
        assert "not grown: head:" in output  # the classifier, reported once at start with the walk's reason
        port = int(re.findall(r"dashboard: http://127\.0\.0\.1:(\d+)", output)[-1])  # a retried start moves it
        done = _check_growth(ex.read_trials(ex.rest_url(port)), 2)
        assert all(len(r["widths"].split(",")) == 2 for r in done)  # conv1 and conv2 of SmallNet, by name
    finally:
        if experiment_id:
            ex.stop(experiment_id)


def test_torchvision_resnet18_grows_and_resumes(tmp_path, cifar_small):
    path = _config(tmp_path, "torchvision_cifar.yml", {"max_steps": 2, "epsilon": 0.0, "grow_ratio": 0.05},
                   {"data_dir": str(cifar_small), "per_class": None, "epochs": 1, "split_samples": 32,
                    "val_fraction": 0.1})
    port = ex.free_port(start=25000 + os.getpid() % 20000)
    experiment_id, port = nnictl.start(ex.load_config(path), "resnet18.yml", port)
    base = ex.rest_url(port)
    try:
        assert ex.wait(base, timeout=600, min_succeeded=2) != "TIMEOUT"
        assert ex.stop(experiment_id)
        assert nnictl.resume(experiment_id, port) == port
        assert ex.wait(base, timeout=600) == "DONE"
        done = _check_growth(ex.read_trials(base), 2)
        assert len(done[0]["widths"].split(",")) == 8  # the conv1 of each of resnet18's eight basic blocks
    finally:
        ex.stop(experiment_id)


def test_torchvision_mobilenet_v2_grows(tmp_path, cifar_small):
    path = _config(tmp_path, "torchvision_cifar.yml",
                   {"model": "torchvision.models.mobilenet_v2", "max_steps": 1, "epsilon": 0.0, "grow_ratio": 0.05},
                   {"data_dir": str(cifar_small), "per_class": None, "epochs": 1, "split_samples": 32,
                    "val_fraction": 0.1})
    port = ex.free_port(start=26000 + os.getpid() % 20000)
    experiment_id, port = nnictl.start(ex.load_config(path), "mobilenet_v2.yml", port)
    try:
        assert ex.wait(ex.rest_url(port), timeout=600) == "DONE"
        done = _check_growth(ex.read_trials(ex.rest_url(port)), 1)
        assert len(done[0]["widths"].split(",")) == 18  # the stem and 17 expansion convs
    finally:
        ex.stop(experiment_id)


@pytest.mark.parametrize("model,match", [
    ("experiments.own_model:linear_only", "has no splittable layer"),
    ("experiments.own_model:nowhere", "has no attribute 'nowhere'"),
    ("tests.test_own_models:_DataDependent", r"failed in module 'body.1'"),
])
def test_a_bad_seed_fails_at_start_not_in_a_trial(tmp_path, model, match):
    path = _config(tmp_path, "own_model_digits.yml", {"model": model, "model_args": {}})
    proc = _cli("run", "--config", str(path), "--port", str(ex.free_port(start=27000 + os.getpid() % 20000)),
                timeout=300)
    assert proc.returncode == 2 and re.search(match, proc.stderr), proc.stdout + proc.stderr
    assert "started" not in proc.stdout and not (tmp_path / "nni").exists()


def test_own_strategy_named_by_import_path_grows_through_nnictl(tmp_path):
    """Issue 26: a strategy in the user's own file (experiments/own_strategy.py), named in the config and
    nowhere else, is accepted by the tuner and run by the trials: its random indexes are what they report."""
    path = _config(tmp_path, "digits.yml", {"max_steps": 2, "strategy": "experiments.own_strategy:RandomSplitStrategy",
                                            "method": "exact"}, {"epochs": 1})
    port = ex.free_port(start=26000 + os.getpid() % 20000)
    experiment_id, port = nnictl.start(ex.load_config(path), "own_strategy.yml", port)
    base = ex.rest_url(port)
    try:
        assert ex.wait(base, timeout=600) == "DONE"
        trials = ex.read_trials(base)
        done = sorted((t["result"] for t in trials if t["status"] == "SUCCEEDED"), key=lambda r: r["step"])
        assert [r["step"] for r in done] == [0, 1, 2], [(t["status"], t.get("result")) for t in trials]
        for parent, child in zip(done, done[1:]):
            assert child["params"] > parent["params"] and child["n_split"] > 0
        for result in done:
            index = json.loads(Path(result["indexes"]).read_text())
            values = [v for layer in index["eigenvalues"].values() for v in layer]
            assert values and all(-1.0 <= v < 0.0 for v in values)  # the toy's draws, not lambda_min
    finally:
        ex.stop(experiment_id)
    with pytest.raises(ValueError, match="no attribute 'Nothing'"):
        from nni_splitting.nni.tuner import SplittingClassArgsValidator
        SplittingClassArgsValidator().validate_class_args(strategy="experiments.own_strategy:Nothing")
