"""The comparison experiment through nnictl (tiny: 1 seed, seed + 1 growth step, 2 pruners), and the
``report`` command reading it back from NNI's records (REST of the running experiment, then
``nnictl view`` of the stopped one).  About 2-3 minutes on 2 CPU cores.

Every experiment is stopped by id in a ``finally``.
"""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nni_helpers as ex
from nni_splitting.nni.arms import arm_label
from nni_splitting.nni.cli import validate_config
from nni_splitting.nni.compare import CompareTuner

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "compare_digits.yml"
FLAT = ("arm", "method", "params", "flops", "params_ratio", "epochs", "wall_time", "seed", "default")


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nni_splitting", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ex.venv_env())


def _tiny_config(folder: Path) -> Path:
    config = ex.load_config(CONFIG)
    config["experimentWorkingDirectory"] = str(folder / "nni")
    config["maxExperimentDuration"] = "10m"
    args = config["tuner"]["classArgs"]
    args.update(max_steps=1, beam=1, pruners=["l1", "taylor"], full_epochs=2, finetune_epochs=1,
                prune_training_steps=10)
    args["trial"].update(epochs=2, split_batches=2, num_threads=1)
    return ex.write_config(config, folder / "compare-tiny.yml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    path = _tiny_config(folder)
    port = ex.free_port(start=21000 + os.getpid() % 20000)
    experiment_id = None
    try:
        for attempt in range(3):  # nnictl gives NNI's manager ~3 s to answer: too short on a busy machine
            proc = _cli("compare", "--config", str(path), "--port", str(port), "--keep", "--out",
                        str(folder / "out"), "--timeout", "400")
            output = proc.stdout + proc.stderr
            match = re.search(r"experiment (\w+) started", output)
            experiment_id = match.group(1) if match else None
            # On a busy machine NNI may also give up on the tuner ("Tuner did not connect in 10 seconds",
            # the experiment turns ERROR before any trial): stop it and try again.
            if experiment_id and "ERROR: no trial yet" in output:
                ex.stop(experiment_id)
                experiment_id = None
            elif experiment_id or "check-status" not in output:
                break
            port = ex.free_port(start=port + 2)
        assert proc.returncode == 0, output[-3000:]
        yield {"id": experiment_id, "port": port, "folder": folder, "output": output}
    finally:
        if experiment_id:
            ex.stop(experiment_id)


def test_bad_compare_class_args_refused(tmp_path):
    config = ex.load_config(CONFIG)
    config["tuner"]["classArgs"]["pruners"] = ["l1", "nope"]
    path = ex.write_config(config, tmp_path / "bad.yml")
    proc = _cli("compare", "--config", str(path), timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_tuner_emits_every_arm_per_ratio(tmp_path):
    tuner = CompareTuner(max_steps=1, beam=1, pruners=["l1"],
                         arms=["pruning", "random_split", "scratch", "pruned_scratch", "uniform"],
                         seed_widths=[2, 4, 8], trial={"epochs": 1})
    tuner.end_hook = None
    sent = tuner.generate_multiple_parameters([0, 1, 2])
    assert sorted(p["arm"] for p in sent) == ["full", "splitting"]
    seed = next(p for p in sent if p["arm"] == "splitting")
    full = next(p for p in sent if p["arm"] == "full")
    tuner.receive_trial_result(1, full, {"default": 0.9, "node": full["node_id"], "params": 1000, "epochs": 3,
                                         "wall_time": 5.0, "checkpoint": "/x/full.pt"})
    assert not tuner.finished
    # the seed trial: index file with one negative index per layer
    import json
    info = {"widths": [2, 4, 8], "width_layers": ["a", "b", "c"], "eigenvalues": {"a": [-1, 0.1], "b": [0.1] * 4,
                                                                                    "c": [0.2] * 8}}
    (tmp_path / "s.json").write_text(json.dumps(info))
    tuner.receive_trial_result(0, seed, {"default": 0.5, "node": seed["node_id"], "params": 10, "epochs": 1,
                                         "wall_time": 1.0, "widths": "2,4,8", "indexes": str(tmp_path / "s.json")})
    child = tuner.generate_multiple_parameters([3])[0]
    assert child["arm"] == "splitting" and child["step"] == 1 and child["ancestor_epochs"] == 1
    info1 = dict(info, widths=[3, 4, 8], eigenvalues={"a": [0.1] * 3, "b": [0.1] * 4, "c": [0.2] * 8})
    (tmp_path / "c.json").write_text(json.dumps(info1))
    tuner.receive_trial_result(3, child, {"default": 0.6, "node": child["node_id"], "params": 20, "epochs": 2,
                                          "wall_time": 2.0, "widths": "3,4,8", "indexes": str(tmp_path / "c.json")})
    arms = tuner.generate_multiple_parameters(list(range(10, 30)))
    got = sorted((p["arm"], p["step"]) for p in arms)
    assert got == [("l1", 0), ("l1", 1), ("random_split", 1), ("scratch", 1), ("uniform", 0), ("uniform", 1)]
    l1 = next(p for p in arms if p["arm"] == "l1" and p["step"] == 1)
    assert l1["full_checkpoint"] == "/x/full.pt" and abs(l1["target_ratio"] - 0.02) < 1e-9 and l1["prior_epochs"] == 3
    rs = next(p for p in arms if p["arm"] == "random_split")
    assert rs["split_counts"] == [{"a": 1}] and rs["widths_seed"] == [2, 4, 8]
    assert next(p for p in arms if p["arm"] == "scratch")["widths"] == [3, 4, 8]
    for i, p in enumerate(arms):
        tuner.receive_trial_result(10 + i, p, {"default": 0.5, "node": p["node_id"], "widths": "2,3,5"})
    assert not tuner.finished  # each pruned architecture is still to be trained from scratch
    again = tuner.generate_multiple_parameters(list(range(40, 50)))
    got = sorted((p["arm"], p["arm_label"], p["step"], p["total_epochs"], tuple(p["widths"])) for p in again)
    assert got == [("pruned_scratch", "l1_scratch", 0, 1, (2, 3, 5)), ("pruned_scratch", "l1_scratch", 1, 2, (2, 3, 5))]
    for i, p in enumerate(again):
        tuner.receive_trial_result(40 + i, p, {"default": 0.5, "node": p["node_id"], "widths": "2,3,5"})
    assert tuner.finished


def test_compare_experiment_has_flat_columns(tiny):
    base = ex.rest_url(tiny["port"])
    assert ex.status(base)["status"] == "DONE", tiny["output"][-2000:]
    trials = ex.read_trials(base)
    results = [t["result"] for t in trials if t["status"] == "SUCCEEDED"]
    assert len(results) == len(trials) == 16, [(t["id"], t["status"]) for t in trials]
    # trialConcurrency 2: NNI 3.0 may file a trial under parameters another trial ran (first in, first out),
    # so its "(space)" columns can be another trial's. Each parameter set still runs exactly once, and each
    # row's metric columns (node, arm, step, widths) are the trial's own truth, which the reports use.
    assert sorted(t["parameters"]["node_id"] for t in trials) == sorted(t["result"]["node"] for t in trials)
    sent = {t["parameters"]["node_id"]: t["parameters"] for t in trials}
    for trial in trials:
        ran = sent[trial["result"]["node"]]
        assert trial["result"]["arm"] == arm_label(ran["arm"], ran), trial
        assert trial["result"]["step"] == ran["step"], trial
    for result in results:
        assert all(k in result for k in FLAT), result
        assert all(not isinstance(v, (dict, list)) for v in result.values()), result  # flat for the dashboard
    arms = sorted(r["arm"] for r in results)
    assert arms == sorted(["splitting", "splitting", "full", "l1", "l1", "taylor", "taylor", "random_split",
                           "new_neurons", "scratch", "uniform", "uniform", "l1_scratch", "l1_scratch",
                           "taylor_scratch", "taylor_scratch"])
    full = next(r for r in results if r["arm"] == "full")
    split = {r["step"]: r for r in results if r["arm"] == "splitting"}
    for r in results:
        if r["arm"] in ("l1", "taylor"):  # pruned to the lineage's ratio; the full pre-training is counted
            assert abs(r["params"] - split[r["step"]]["params"]) <= 0.25 * split[r["step"]]["params"] + 60
            assert r["epochs"] >= full["epochs"] + 1
    assert split[1]["epochs"] == 4 and split[1]["wall_time"] > split[0]["wall_time"]
    for r in results:  # a pruned architecture from scratch: the pruner's widths, the lineage's epochs
        if r["arm"].endswith("_scratch"):
            pruned = next(q for q in results if q["arm"] == r["arm"][:-len("_scratch")] and q["step"] == r["step"])
            assert r["widths"] == pruned["widths"] and r["epochs"] == split[r["step"]]["epochs"]


def test_report_reads_the_experiment(tiny):
    out = tiny["folder"] / "report"
    proc = _cli("report", tiny["id"], "--port", str(tiny["port"]), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and {r["trial_id"] for r in rows} == {t["id"] for t in ex.read_trials(ex.rest_url(tiny["port"]))}
    assert {r["experiment_id"] for r in rows} == {tiny["id"]}
    assert (out / "compare.png").stat().st_size > 10_000 and "| splitting |" in (out / "results.md").read_text()
    # the compare command itself wrote the same from REST
    assert (tiny["folder"] / "out" / "results.csv").exists()


def test_report_of_a_stopped_experiment_through_nnictl_view(tiny):
    assert ex.stop(tiny["id"])
    out = tiny["folder"] / "viewed"
    proc = _cli("report", tiny["id"], "--workdir", str(tiny["folder"] / "nni"), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "results.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 16


@pytest.mark.parametrize("name", ["compare_digits.yml", "compare_cifar_mobilenet.yml", "compare_cifar_mobilenet_cpu.yml",
                                  "compare_cifar_vgg19.yml", "compare_cifar_vgg19_cpu.yml"])
def test_compare_configs_build_the_tuner(name):
    config = ex.load_config(ROOT / "experiments" / name)
    assert config["trialCommand"].startswith("python -m nni_splitting.nni.arms")
    tuner = CompareTuner(**config["tuner"]["classArgs"])
    tuner.end_hook = None
    assert tuner.args.beam >= 1 and tuner.pruners


@pytest.mark.parametrize("name,tuner", [("compare_digits_nas.yml", "tpe_tuner.TpeTuner"),
                                        ("compare_digits_nas_random.yml", "random_tuner.RandomTuner"),
                                        ("compare_digits_nas_evolution.yml", "evolution_tuner.EvolutionTuner")])
def test_width_search_configs(name, tuner):
    import importlib
    import json

    from nni_splitting.nni.arms import _resolve
    from nni_splitting.baselines import load_search_space, widths_from_params

    config = ex.load_config(ROOT / "experiments" / name)
    module, cls = tuner.split(".")
    built = getattr(importlib.import_module(f"nni.algorithms.hpo.{module}"), cls)(**config["tuner"]["classArgs"])
    built.update_search_space(load_search_space("small_cnn"))  # the built-in tuner takes its classArgs and space
    assert config["tuner"]["name"].lower() in cls.lower()
    assert Path(config["searchSpaceFile"]).exists() and "nni_splitting.nni.arms" in config["trialCommand"]
    overrides = json.loads(config["trialCommand"].split("--params", 1)[1].strip().strip("'"))
    assert overrides["max_params_ratio"] == 0.05 and overrides["arm_label"].startswith("hpo_")
    params = _resolve({"mult_0": 0.25, "mult_1": 0.5, "mult_2": 1.0}, {"arm": "width", "epochs": 1})
    assert widths_from_params("small_cnn", params) == [8, 32, 128]


def test_step_baselines_are_queued_when_the_step_reports_and_only_for_baseline_steps(tmp_path):
    import json
    tuner = CompareTuner(max_steps=2, beam=1, pruners=["l1"], arms=["pruning", "scratch", "uniform"],
                         baseline_steps=[1], seed_widths=[2, 4], trial={"epochs": 1})
    tuner.end_hook = None
    sent = tuner.generate_multiple_parameters([0, 1])
    seed = next(p for p in sent if p["arm"] == "splitting")
    full = next(p for p in sent if p["arm"] == "full")
    info = {"widths": [2, 4], "width_layers": ["a", "b"], "eigenvalues": {"a": [-1, -0.5], "b": [-0.1] * 4}}
    (tmp_path / "s.json").write_text(json.dumps(info))
    tuner.receive_trial_result(0, seed, {"default": 0.5, "node": seed["node_id"], "params": 10, "epochs": 1,
                                         "widths": "2,4", "indexes": str(tmp_path / "s.json")})
    step1 = tuner.generate_multiple_parameters([2, 3, 4])
    assert [p["arm"] for p in step1] == ["splitting"]  # step 0 is not a baseline step
    info1 = dict(info, widths=[3, 4], eigenvalues={"a": [-1, -0.5, -0.2], "b": [-0.1] * 4})
    (tmp_path / "c.json").write_text(json.dumps(info1))
    tuner.receive_trial_result(2, step1[0], {"default": 0.6, "node": step1[0]["node_id"], "params": 20,
                                             "epochs": 2, "widths": "3,4", "indexes": str(tmp_path / "c.json")})
    # the lineage goes on, and step 1's scratch + uniform are out before the full model has reported
    got = tuner.generate_multiple_parameters([5, 6, 7, 8])
    assert [p["arm"] for p in got][0] == "splitting" and got[0]["step"] == 2
    assert sorted((p["arm"], p["step"]) for p in got[1:]) == [("scratch", 1), ("uniform", 1)]
    tuner.receive_trial_result(1, full, {"default": 0.9, "node": full["node_id"], "params": 100, "epochs": 3,
                                         "checkpoint": "/x/full.pt"})
    l1 = tuner.generate_multiple_parameters([9, 10])
    assert [(p["arm"], p["step"]) for p in l1] == [("l1", 1)] and abs(l1[0]["target_ratio"] - 0.2) < 1e-9
    with pytest.raises(ValueError, match="baseline_steps"):
        CompareTuner(max_steps=2, baseline_steps=[3])


def test_compare_class_args_validator_is_public_and_cheap():
    from nni_splitting.nni.compare import CompareClassArgsValidator
    check = CompareClassArgsValidator().validate_class_args
    check(model="small_cnn", arms=["pruning", "uniform"], pruners=["l1"], baseline_steps=[0, 2], max_steps=2)
    for bad, match in (({"arms": ["pruning", "magic"]}, "unknown arms"), ({"pruners": "l1"}, "list of names"),
                       ({"finetune_epochs": 0}, "finetune_epochs"), ({"baseline_steps": [5]}, "baseline_steps"),
                       ({"max_step": 3}, "unknown classArgs")):
        with pytest.raises(ValueError, match=match):
            check(**bad)


def test_labelled_lineage_baselines_follow_its_seed_and_label(tmp_path):
    """A Firefly lineage of a CompareTuner gets its found architecture from scratch as ``firefly_scratch``,
    seeded like the lineage (its lineage_settings seed), not as the S2D ``scratch`` of trial.seed + lineage."""
    import json
    tuner = CompareTuner(max_steps=1, beam=1, arms=["scratch", "uniform"], seed_widths=[2, 4, 8],
                         trial={"epochs": 1, "seed": 0},
                         lineage_settings=[{"arm_label": "firefly", "seed": 7, "growth_strategy": "firefly"}])
    tuner.end_hook = None
    seed = tuner.generate_multiple_parameters([0])[0]
    assert seed["arm_label"] == "firefly" and seed["seed"] == 7 and seed["growth_strategy"] == "firefly"
    info = {"widths": [2, 4, 8], "width_layers": ["a", "b", "c"], "eigenvalues": {"a": [-1, 0.1], "b": [0.1] * 4,
                                                                                    "c": [0.2] * 8}}
    (tmp_path / "s.json").write_text(json.dumps(info))
    tuner.receive_trial_result(0, seed, {"default": 0.5, "node": seed["node_id"], "params": 10, "epochs": 1,
                                         "wall_time": 1.0, "widths": "2,4,8", "indexes": str(tmp_path / "s.json")})
    sent = tuner.generate_multiple_parameters(list(range(1, 6)))
    assert sorted(p["arm"] for p in sent) == ["splitting", "uniform"]  # no pruner: no full model to train
    child = next(p for p in sent if p["arm"] == "splitting")
    (tmp_path / "c.json").write_text(json.dumps(dict(info, widths=[3, 4, 8])))
    tuner.receive_trial_result(1, child, {"default": 0.6, "node": child["node_id"], "params": 20, "epochs": 2,
                                          "wall_time": 2.0, "widths": "3,4,8", "indexes": str(tmp_path / "c.json")})
    sent += tuner.generate_multiple_parameters(list(range(6, 12)))
    scratch = [p for p in sent if p["arm"] == "scratch"]
    uniform = [p for p in sent if p["arm"] == "uniform"]
    assert scratch and all(p["arm_label"] == "firefly_scratch" and p["seed"] == 7 for p in scratch)
    assert uniform and all(p["seed"] == 7 and not p.get("arm_label") for p in uniform)


def test_resumed_comparison_queues_only_the_missing_arms(tmp_path):
    """``nnictl resume`` of a comparison: NNI replays the finished trials (``import_data``) into a fresh tuner;
    imported arms stay arms (not growth steps), nothing finished runs again, and what the imported steps
    lack is queued: here the L1 pruner and the scratch arm of step 1, and the step-0 L1 architecture from
    scratch (queued when that pruner finished, never run), not the seed, the step, the full model or the
    uniform arms that had finished."""
    import json
    args = dict(max_steps=1, beam=1, pruners=["l1"], arms=["pruning", "scratch", "uniform", "pruned_scratch"],
                seed_widths=[2, 4, 8], trial={"epochs": 1})
    tuner = CompareTuner(**args)
    tuner.end_hook = None
    finished = []

    def finish(parameter_id, params, value):
        value = dict(value, node=params["node_id"])
        tuner.receive_trial_result(parameter_id, params, value)
        finished.append({"parameter": params, "value": value, "trialJobId": f"T{parameter_id}"})

    sent = tuner.generate_multiple_parameters([0, 1])
    seed = next(p for p in sent if p["arm"] == "splitting")
    full = next(p for p in sent if p["arm"] == "full")
    finish(1, full, {"default": 0.9, "params": 1000, "epochs": 3, "wall_time": 5.0, "checkpoint": "/x/full.pt"})
    info = {"widths": [2, 4, 8], "width_layers": ["a", "b", "c"], "eigenvalues": {"a": [-1, 0.1], "b": [0.1] * 4,
                                                                                    "c": [0.2] * 8}}
    (tmp_path / "s.json").write_text(json.dumps(info))
    finish(0, seed, {"default": 0.5, "params": 10, "epochs": 1, "wall_time": 1.0, "widths": "2,4,8",
                     "indexes": str(tmp_path / "s.json")})
    child = tuner.generate_multiple_parameters([2])[0]
    (tmp_path / "c.json").write_text(json.dumps(dict(info, widths=[3, 4, 8])))
    finish(2, child, {"default": 0.6, "params": 20, "epochs": 2, "wall_time": 2.0, "widths": "3,4,8",
                      "indexes": str(tmp_path / "c.json")})
    arms = tuner.generate_multiple_parameters(list(range(10, 20)))
    assert sorted((p["arm"], p["step"]) for p in arms) == [("l1", 0), ("l1", 1), ("scratch", 1), ("uniform", 0),
                                                           ("uniform", 1)]
    for i, p in enumerate(arms):  # the experiment stops with the step-0 pruner and both uniform arms done
        if (p["arm"], p["step"]) in (("l1", 0), ("uniform", 0), ("uniform", 1)):
            finish(10 + i, p, {"default": 0.5, "widths": "2,3,5"})

    resumed = CompareTuner(**args)
    resumed.end_hook = None
    resumed.import_data(finished)
    again = resumed.generate_multiple_parameters(list(range(30, 40)))
    assert sorted((p["arm"], p["step"]) for p in again) == [("l1", 1), ("pruned_scratch", 0), ("scratch", 1)]
    l1 = next(p for p in again if p["arm"] == "l1")
    assert l1["full_checkpoint"] == "/x/full.pt" and abs(l1["target_ratio"] - 0.02) < 1e-9
    assert next(p for p in again if p["arm"] == "scratch")["widths"] == [3, 4, 8]
    assert not resumed.finished
    for i, p in enumerate(again):
        resumed.receive_trial_result(30 + i, p, {"default": 0.5, "node": p["node_id"], "widths": "2,3,5"})
    last = resumed.generate_multiple_parameters([50, 51])  # the step-1 pruner's architecture from scratch
    assert [(p["arm"], p["step"]) for p in last] == [("pruned_scratch", 1)]
    resumed.receive_trial_result(50, last[0], {"default": 0.5, "node": last[0]["node_id"], "widths": "2,3,5"})
    assert resumed.finished


def test_stopped_comparison_resumes_through_nnictl_without_running_an_arm_twice(tmp_path, tiny):
    """The tiny comparison stopped by ``nnictl stop`` after a few trials, then ``nnictl resume``: it ends DONE
    with every (arm, step) of the uninterrupted run (the ``tiny`` fixture's) succeeded exactly once."""
    from nni_splitting.nni import nnictl
    from nni_splitting.nni.report import read_csv
    path = _tiny_config(tmp_path)
    port = ex.free_port(start=24000 + os.getpid() % 20000)
    experiment_id = ex.create(path, port, env=ex.venv_env())
    base = ex.rest_url(port)
    try:
        assert ex.wait(base, timeout=400, min_succeeded=3) != "TIMEOUT"
        assert ex.stop(experiment_id)
        assert nnictl.resume(experiment_id, port) == port
        assert ex.wait(base, timeout=600) == "DONE"
        done = [t["result"] for t in ex.read_trials(base) if t["status"] == "SUCCEEDED"]
        resumed = sorted((r["arm"], r["step"]) for r in done)
        assert len(resumed) == len(set(resumed)), resumed  # no arm ran twice
        # the uninterrupted run's rows, as its `compare --out` wrote them (later tests stop that experiment)
        clean = sorted((r["arm"], int(r["step"])) for r in read_csv(tiny["folder"] / "out" / "results.csv")
                       if r["status"] == "SUCCEEDED")
        assert resumed == clean
    finally:
        ex.stop(experiment_id)


def test_continue_from_refuses_an_unknown_experiment(tmp_path):
    with pytest.raises(ValueError, match="no NNI experiment 'nope0000'"):
        CompareTuner(max_steps=2, seed_widths=[2, 4, 8], continue_from="nope0000")
    with pytest.raises(ValueError, match="has db/nni.sqlite"):
        CompareTuner(max_steps=2, seed_widths=[2, 4, 8], continue_from=str(tmp_path))
    for bad in ([], [""], 3):
        with pytest.raises(ValueError, match="continue_from must be an experiment id or folder"):
            CompareTuner(max_steps=2, seed_widths=[2, 4, 8], continue_from=bad)
    # the CLI refuses it before starting anything, looking in the config's experimentWorkingDirectory
    config = ex.load_config(_tiny_config(tmp_path))
    config["tuner"]["classArgs"]["continue_from"] = "nope0000"
    path = ex.write_config(config, tmp_path / "continue.yml")
    proc = _cli("compare", "--config", str(path), "--workdir", str(tmp_path / "elsewhere"), timeout=120)
    assert proc.returncode != 0 and "no NNI experiment 'nope0000'" in proc.stderr, proc.stdout + proc.stderr
    assert str(tmp_path / "elsewhere" / "nope0000") in proc.stderr
    (tmp_path / "elsewhere" / "nope0000" / "db").mkdir(parents=True)
    (tmp_path / "elsewhere" / "nope0000" / "db" / "nni.sqlite").touch()
    validate_config(dict(config, experimentWorkingDirectory=str(tmp_path / "elsewhere")), compare=True)


def test_comparison_continues_a_finished_one_to_more_steps_through_nnictl(tmp_path, tiny):
    """The tiny comparison (max_steps 1, finished) continued by a new experiment with max_steps 2 and
    ``continue_from``: only step 2 runs, its growth trial grown from the tiny run's step-1 network, and
    every baseline arm at step 2; nothing of steps 0-1 runs again."""
    path = _tiny_config(tmp_path)
    config = ex.load_config(path)
    config["tuner"]["classArgs"].update(max_steps=2, continue_from=str(tiny["folder"] / "nni" / tiny["id"]))
    ex.write_config(config, path)
    proc = _cli("compare", "--config", str(path), "--port", str(ex.free_port(start=25000 + os.getpid() % 20000)),
                "--out", str(tmp_path / "out"), "--timeout", "500")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["status"] == "SUCCEEDED"]
    assert sorted(r["arm"] for r in rows) == sorted(["splitting", "l1", "taylor", "random_split", "new_neurons",
                                                     "scratch", "uniform", "l1_scratch", "taylor_scratch"]), rows
    assert {r["step"] for r in rows} == {"2"}
    with open(tiny["folder"] / "out" / "results.csv", newline="") as handle:
        before = {r["step"]: r for r in csv.DictReader(handle) if r["arm"] == "splitting"}
    grown = next(r for r in rows if r["arm"] == "splitting")
    assert int(grown["params"]) > int(before["1"]["params"]) and int(grown["epochs"]) == int(before["1"]["epochs"]) + 2
    # the chain of both experiments holds every step and arm: a third one with the same settings has nothing to run
    continued = re.search(r"experiment (\w+) started", proc.stdout).group(1)
    chained = CompareTuner(**dict(config["tuner"]["classArgs"], continue_from=[
        str(tiny["folder"] / "nni" / tiny["id"]), str(tmp_path / "nni" / continued)]))
    chained.end_hook = None
    assert chained.generate_multiple_parameters(list(range(20))) == [] and chained.finished


def test_arms_go_round_the_seeds(tmp_path):
    """Arms queued for two seeds are handed out alternately (growth first), so a comparison stopped early
    has the first baselines of every seed, not all of the first seed's."""
    import json
    tuner = CompareTuner(max_steps=1, beam=2, pruners=["l1"], arms=["pruning", "uniform"], seed_widths=[2, 4, 8],
                         trial={"epochs": 1})
    tuner.end_hook = None
    sent = tuner.generate_multiple_parameters([0, 1, 2, 3])
    info = {"widths": [2, 4, 8], "width_layers": ["a", "b", "c"], "eigenvalues": {"a": [-1, 0.1], "b": [0.1] * 4,
                                                                                    "c": [0.2] * 8}}
    (tmp_path / "s.json").write_text(json.dumps(info))
    for parameter_id, p in sorted(enumerate(sent), key=lambda item: item[1]["arm"] == "splitting"):  # fulls first
        value = {"default": 0.5, "node": p["node_id"], "params": 10, "epochs": 1, "widths": "2,4,8",
                 "checkpoint": "/x/full.pt", "indexes": str(tmp_path / "s.json")}
        tuner.receive_trial_result(parameter_id, p, value)
    handed = tuner.generate_multiple_parameters(list(range(10, 16)))
    assert [p["arm"] for p in handed[:2]] == ["splitting", "splitting"]
    assert [(p["arm"], p["lineage"]) for p in handed[2:]] == [("l1", 0), ("l1", 1), ("uniform", 0), ("uniform", 1)]
