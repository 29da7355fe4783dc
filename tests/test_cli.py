"""The ``nni-splitting`` command line (:mod:`nni_splitting.nni.cli`): input errors and NNI's folder defaults.

The two real-nnictl tests (a config without ``trialCodeDirectory``; trials that cannot start) take
about a minute together on 2 CPU cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nni_splitting.nni.cli import main
from nni_splitting.nni import nnictl
from nni_splitting.nni.config import load_config, write_config

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "experiments" / "digits.yml"


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nni_splitting", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=nnictl.venv_env())


def test_missing_config_is_one_line_and_exit_2(tmp_path):
    proc = _cli("run", "--config", str(tmp_path / "nope.yml"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nni-splitting run: no config file '{tmp_path / 'nope.yml'}'"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_config_that_is_not_a_mapping_is_refused(tmp_path, capsys):
    (tmp_path / "list.yml").write_text("- 1\n- 2\n")
    assert main(["compare", "--config", str(tmp_path / "list.yml")]) == 2
    assert "is not a YAML mapping" in capsys.readouterr().err


def _foreign_digits(folder: Path, **changes) -> Path:
    """experiments/digits.yml copied into ``folder`` without trialCodeDirectory / tuner codeDirectory."""
    raw = yaml.safe_load(DIGITS.read_text())
    raw.pop("trialCodeDirectory")
    raw["tuner"].pop("codeDirectory")
    raw["experimentWorkingDirectory"] = str(folder / "nni")
    raw["tuner"]["classArgs"].update(max_steps=1)
    raw["tuner"]["classArgs"]["trial"].update(epochs=2, split_batches=2)
    raw.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(raw, folder / "digits.yml")


def test_folder_defaults_are_the_config_files_folder(tmp_path):
    config = load_config(_foreign_digits(tmp_path / "user"))
    assert config["trialCodeDirectory"] == str((tmp_path / "user").resolve())  # NNI's default: the file's folder
    assert config["tuner"]["codeDirectory"] == str((tmp_path / "user").resolve())
    explicit = load_config(DIGITS)
    assert explicit["trialCodeDirectory"] == str(ROOT) == explicit["tuner"]["codeDirectory"]


def test_run_without_trial_code_directory_grows(tmp_path):
    """Before: the default pointed at the deleted temporary copy; trials never started (issue 13, item 5)."""
    path = _foreign_digits(tmp_path / "user")
    port = nnictl.free_port(start=28000 + os.getpid() % 20000)
    proc = _cli("run", "--config", str(path), "--port", str(port), "--timeout", "400")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "best by validation accuracy" in proc.stdout and "SUCCEEDED" in proc.stdout
    trials = [p for p in (tmp_path / "user" / "nni").glob("*/environments/local-env/trials/*/trial.log")
              if p.parts[-6] != "_latest"]  # NNI's _latest link names the same experiment
    assert len(trials) == 2  # seed + 1 step, run from the config's folder


def test_trials_that_cannot_start_fail_at_once_with_nnis_reason(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    path = _foreign_digits(tmp_path / "user", trialCodeDirectory=str(code))
    port = nnictl.free_port(start=30000 + os.getpid() % 20000)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "nni_splitting", "run", "--config", str(path), "--port",
                             str(port), "--timeout", "600"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=nnictl.venv_env())
    try:
        first = proc.stdout.readline()
        assert "started" in first, first + proc.stderr.read()
        shutil.rmtree(code)  # the trials' working directory vanishes: every spawn fails with ENOENT
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "NNI cannot start the trials" in err and "spawn /bin/bash ENOENT" in err, err
    assert "trialCodeDirectory" in err and "stopped" in out
    assert time.time() - started < 150  # not the 600 s timeout


def test_the_cli_waits_as_long_as_the_experiment_may_run():
    """A 300-minute comparison was stopped after the old fixed 1-hour wait; the default now follows the config."""
    import argparse
    from nni_splitting.nni.watch import NO_LIMIT_S, duration_seconds, wait_limit
    assert [duration_seconds(v) for v in ("300m", "2h", "45s", "1d", 90, "120")] == [18000, 7200, 45, 86400, 90, 120]
    args = argparse.Namespace(timeout=None)
    assert wait_limit(args, {"maxExperimentDuration": "300m"}) == 18000 + 600
    assert wait_limit(args, {}) == NO_LIMIT_S
    assert wait_limit(argparse.Namespace(timeout=30.0), {"maxExperimentDuration": "300m"}) == 30.0
    with pytest.raises(ValueError, match="maxExperimentDuration"):
        duration_seconds("soon")
