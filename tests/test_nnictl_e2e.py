"""End to end through nnictl: experiments/digits.yml (shortened) grows a network on the local training service.

Starts a real NNI experiment with ``nni-splitting run --keep`` (which calls ``nnictl create``) on a free
port with ``experimentWorkingDirectory`` in tmp_path, waits for the tuner to end growth (NNI status
``DONE``), reads trials and metrics back through the REST API and ``nnictl experiment export``, and
stops the experiment by id in every case.  About a minute on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nni_helpers as ex  # the old import path: re-exports of nni_splitting.nni
from nni_splitting.nni.lineage import grown_widths
from nni_splitting.nni import nnictl

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "experiments" / "digits.yml"


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "nni_splitting", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ex.venv_env(env))


def _short_config(tmp_path, **class_args):
    config = ex.load_config(DIGITS)
    config["experimentWorkingDirectory"] = str(tmp_path / "nni")
    config["maxExperimentDuration"] = "10m"
    args = config["tuner"]["classArgs"]
    args.update({"max_steps": 3, **class_args})
    args["trial"].update(epochs=3, split_batches=4, num_threads=1)
    return ex.write_config(config, tmp_path / "digits-short.yml")


def test_digits_growth_end_to_end(tmp_path):
    path = _short_config(tmp_path)
    port = ex.free_port(start=20000 + os.getpid() % 20000)
    experiment_id = None
    try:
        proc = _cli("run", "--config", str(path), "--port", str(port), "--keep", "--timeout", "420")
        output = proc.stdout + proc.stderr
        match = re.search(r"experiment (\w+) started", output)
        experiment_id = match.group(1) if match else None
        assert proc.returncode == 0, output[-3000:]
        assert f"http://127.0.0.1:{port}" in output and "this machine only" in output  # loopback by default
        assert re.search(r"lineage\s+step\s+trial", output)  # the lineage table was printed
        base = ex.rest_url(port)
        assert ex.status(base)["status"] == "DONE"  # the tuner ended the experiment itself

        trials = ex.read_trials(base)
        done = {t["id"]: t for t in trials if t["status"] == "SUCCEEDED"}
        assert len(done) >= 3, [(t["id"], t["status"]) for t in trials]
        # What each trial really ran is in its own report (result + splitting.json): NNI 3.0 may file a
        # trial under another trial's parameters (first-in-first-out parameter queue, see docs/nni.md).
        infos = {tid: json.loads(Path(t["result"]["indexes"]).read_text()) for tid, t in done.items()}
        seeds = [t for t in done.values() if infos[t["id"]]["step"] == 0]
        children = [t for t in done.values() if infos[t["id"]]["step"] > 0]
        assert len(seeds) == 1 and children
        for child in children:
            info, result = infos[child["id"]], child["result"]
            parent = done.get(info["parent"])
            assert parent is not None, f"parent {info['parent']} of {child['id']} did not succeed"
            parent_info = infos[parent["id"]]
            assert info["step"] == parent_info["step"] + 1 and info["lineage"] == parent_info["lineage"]
            assert info["parent_node"] == parent_info["node_id"]
            assert result["params"] > parent["result"]["params"]  # monotone growth along the lineage
            assert result["flops"] > parent["result"]["flops"]
            expected = grown_widths(parent_info["widths"], parent_info["width_layers"], info["split_plan"])
            assert info["widths"] == expected and info["split_plan"]
            assert result["method"] == "splitting" and result["parent"] == parent["id"]
            assert child["parameters"]["node_id"] == info["node_id"]  # one trial at a time: NNI's record agrees
        best_grown = max(c["result"]["default"] for c in children)
        assert best_grown > seeds[0]["result"]["default"]

        exported = tmp_path / "export.json"
        subprocess.run([*ex.nnictl_command(), "experiment", "export", experiment_id, "--type", "json", "--filename",
                        str(exported)], env=ex.venv_env(), check=True, capture_output=True, timeout=60)
        rows = json.loads(exported.read_text())
        assert {r["trialJobId"] for r in rows} >= set(done)

        state = json.loads((tmp_path / "nni" / experiment_id / "checkpoint" / "splitting_tuner.json").read_text())
        assert state["finished"] and "max_steps" in state["stopped"]["0"]
    finally:
        if experiment_id:
            ex.stop(experiment_id)


def _start_with_a_long_child(tmp_path, port_base):
    """A seed (2 epochs) and one growth step long enough to kill (40 epochs); ``(id, REST base)``."""
    path = _short_config(tmp_path, max_steps=1)
    config = ex.load_config(path)
    config["tuner"]["classArgs"]["trial"].update(seed_epochs=2, epochs=40)
    path = ex.write_config(config, path)
    port = ex.free_port(start=port_base + os.getpid() % 20000)
    experiment_id = ex.create(path, port, env=ex.venv_env())
    return experiment_id, ex.rest_url(port)


def _running_child(base):
    """The growth trial once it trains (it has read its parameters and its parent, and reported)."""
    for _ in range(400):
        running = [t for t in ex.read_trials(base) if t["status"] == "RUNNING"]
        if running and ex.rest(base, f"metric-data/{running[0]['id']}"):
            return running[0]
        time.sleep(0.1)
    return None


def test_killed_trial_is_retried_from_the_same_parent(tmp_path):
    experiment_id, base = _start_with_a_long_child(tmp_path, 22000)
    try:
        assert ex.wait(base, timeout=240, min_succeeded=1) != "TIMEOUT"
        victim = _running_child(base)  # kill the child once it is training
        assert victim is not None and victim["parameters"]["step"] == 1
        ex.rest(base, f"trial-jobs/{victim['id']}", method="DELETE")  # what `nnictl trial kill` does
        assert ex.wait(base, timeout=300) == "DONE"
        trials = {t["id"]: t for t in ex.read_trials(base)}
        assert trials[victim["id"]]["status"] == "USER_CANCELED"
        retries = [t for t in trials.values() if t["parameters"]["step"] == 1 and t["id"] != victim["id"]]
        assert len(retries) == 1 and retries[0]["status"] == "SUCCEEDED"
        retry = retries[0]["parameters"]
        assert retry["attempt"] == 1 and retry["parent"] == victim["parameters"]["parent"]
        assert retry["split_plan"] == victim["parameters"]["split_plan"]
        assert retries[0]["result"]["node"] == retry["node_id"]
    finally:
        ex.stop(experiment_id)


def test_corrupt_parent_checkpoint_is_never_read_again_and_the_lineage_ends_early(tmp_path):
    """Issue 13 item 3 and issue 28 item 3, in a real run: a truncated parent checkpoint is caught by its SHA-256.

    The child is killed while it trains and the seed's checkpoint truncated.  Before issue 28 the retry
    and the fallback read the same corrupt file, failed, and the run still ended as if all was well.
    Now the tuner checks the parent against the SHA-256 in its splitting.json before the retry: no
    trial reads the file again, and the lineage (whose seed has no ancestor) ends early with the reason.
    """
    experiment_id, base = _start_with_a_long_child(tmp_path, 24000)
    try:
        assert ex.wait(base, timeout=240, min_succeeded=1) != "TIMEOUT"
        seed = next(t for t in ex.read_trials(base) if t["status"] == "SUCCEEDED")
        checkpoint = Path(seed["result"]["checkpoint"])
        victim = _running_child(base)  # it has read the checkpoint once it reports
        assert victim is not None
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # truncated, as by a full disk
        ex.rest(base, f"trial-jobs/{victim['id']}", method="DELETE")
        assert ex.wait(base, timeout=300) == "DONE"  # the tuner ended: nothing hangs
        trials = {t["id"]: t for t in ex.read_trials(base)}
        assert set(trials) == {seed["id"], victim["id"]}, [(t["id"], t["status"]) for t in trials.values()]
        state = json.loads((tmp_path / "nni" / experiment_id / "checkpoint" / "splitting_tuner.json").read_text())
        early = state["ended_early"]["0"]
        assert str(checkpoint) in early and "SHA-256" in early and "no earlier checkpoint" in early, early
        assert state["stopped"]["0"] == early
    finally:
        ex.stop(experiment_id)


def test_stop_and_resume_continues_growth(tmp_path):
    path = _short_config(tmp_path)  # seed + 3 steps
    port = ex.free_port(start=23000 + os.getpid() % 20000)
    experiment_id = ex.create(path, port, env=ex.venv_env())
    base = ex.rest_url(port)
    try:
        assert ex.wait(base, timeout=240, min_succeeded=2) != "TIMEOUT"
        assert ex.stop(experiment_id)
        # nnictl resume, retried if NNI's "Tuner did not connect in 10 seconds" race is lost
        assert nnictl.resume(experiment_id, port) == port
        assert ex.wait(base, timeout=300) == "DONE"
        trials = ex.read_trials(base)
        done = [t for t in trials if t["status"] == "SUCCEEDED"]
        steps = sorted(t["result"]["step"] for t in done)
        assert steps == [0, 1, 2, 3], [(t["id"], t["status"], t["result"]) for t in trials]  # no step twice
        ids = {t["id"] for t in done}
        assert all(t["result"]["parent"] in ids for t in done if t["result"]["step"] > 0)
    finally:
        ex.stop(experiment_id)


def test_bad_class_args_fail_before_start(tmp_path):
    path = _short_config(tmp_path, threshold=0.5)
    proc = _cli("run", "--config", str(path), "--port", str(ex.free_port(start=21000 + os.getpid() % 20000)))
    assert proc.returncode == 2
    assert "threshold must be a number <= 0" in proc.stderr
    assert "started" not in proc.stdout
    assert not (tmp_path / "nni").exists()  # nothing was started


def test_register_tuner_by_name(tmp_path):
    env = dict(os.environ, NNI_CONFIG_DIR=str(tmp_path / "nni-config"))  # keep the real registry untouched
    proc = _cli("register", env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    show = subprocess.run([*ex.nnictl_command(), "algo", "show", "Splitting"], env=ex.venv_env(env),
                          capture_output=True, text=True, timeout=120)
    meta = json.loads(show.stdout[show.stdout.index("{"):])
    assert meta["className"] == "nni_splitting.nni.tuner.SplittingTuner"
    assert meta["classArgsValidator"] == "nni_splitting.nni.tuner.SplittingClassArgsValidator"


def _lineage(base):
    """``{step: (widths, split plan)}`` of the succeeded growth trials."""
    done = [t for t in ex.read_trials(base) if t["status"] == "SUCCEEDED"]
    return {t["result"]["step"]: (t["result"]["widths"], json.dumps(t["parameters"].get("split_plan"), sort_keys=True))
            for t in done}


def test_stop_mid_trial_then_resume_ends_with_the_uninterrupted_lineage(tmp_path):
    """Issue 13 item 2: ``nnictl stop`` while a growth trial trains, ``nnictl resume``: same lineage as a clean run."""
    reference_dir, resumed_dir = tmp_path / "clean", tmp_path / "resumed"
    lineages = {}
    for name, folder in (("clean", reference_dir), ("resumed", resumed_dir)):
        folder.mkdir()
        path = _short_config(folder, max_steps=2)
        config = ex.load_config(path)
        config["tuner"]["classArgs"]["trial"].update(epochs=12)  # a child long enough to stop mid-training
        config["tuner"]["classArgs"]["resume_timeout"] = 120
        path = ex.write_config(config, path)
        port = ex.free_port(start=24000 + os.getpid() % 20000 + (0 if name == "clean" else 40))
        experiment_id = ex.create(path, port, env=ex.venv_env())
        base = ex.rest_url(port)
        try:
            if name == "resumed":
                victim = None
                for _ in range(1200):  # stop while the step-1 trial is training (it has reported an epoch)
                    running = [t for t in ex.read_trials(base) if t["status"] == "RUNNING"
                               and t["parameters"].get("step") == 1]
                    if running and ex.rest(base, f"metric-data/{running[0]['id']}"):
                        victim = running[0]
                        break
                    time.sleep(0.1)
                assert victim is not None, "the step-1 trial never started training"
                assert ex.stop(experiment_id)
                assert nnictl.resume(experiment_id, port) == port
            assert ex.wait(base, timeout=420) == "DONE"
            lineages[name] = _lineage(base)
        finally:
            ex.stop(experiment_id)
    assert sorted(lineages["clean"]) == [0, 1, 2]
    assert lineages["resumed"] == lineages["clean"]
