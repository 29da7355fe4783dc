"""The trial alone (standalone mode, no NNI manager) on the embedded digits data set.

Needs the core (compute_splitting, apply_splits, neuron_costs, count_model) and the models/data
modules; each trial here takes a few seconds on a CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nni_splitting import load_splits
from nni_splitting.common.storage import CHECKPOINT_FILE, INDEX_FILE, SPLITS_FILE
from nni_splitting.nni.trial import resolve_params, run_trial

ROOT = Path(__file__).resolve().parent.parent
FAST = {"epochs": 1, "split_batches": 2, "num_threads": 1}


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed")
    params = resolve_params({}, dict(FAST, widths=[4, 6, 8], node_id="l0s0-test"))
    return params, folder, run_trial(params, folder)


def test_standalone_cli_writes_checkpoint_and_indexes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NNI_PLATFORM", None)
    proc = subprocess.run([sys.executable, "-m", "nni_splitting.nni.trial", "--output-dir", str(tmp_path),
                           "--params", json.dumps(FAST)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in (CHECKPOINT_FILE, SPLITS_FILE, INDEX_FILE):
        assert (tmp_path / name).stat().st_size > 0
    assert "Final result" in proc.stdout + proc.stderr
    info = json.loads((tmp_path / INDEX_FILE).read_text())
    assert info["model"] == "small_cnn" and info["widths"] == [8, 16, 32]  # default seed: 0.25 x default widths
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_seed_result_and_files(seed_run):
    params, folder, result = seed_run
    assert 0.0 <= result["default"] <= 1.0 and 0.0 <= result["val_accuracy"] <= 1.0
    assert result["method"] == "splitting" and result["parent"] == "" and result["step"] == 0
    assert result["node"] == "l0s0-test" and result["widths"] == "4,6,8"
    assert 0 < result["params_ratio"] < 1 and 0 < result["flops_ratio"] < 1
    assert all(not isinstance(v, (dict, list)) for v in result.values())  # flat: NNI dashboard columns
    info = json.loads(Path(result["indexes"]).read_text())
    assert info["widths"] == [4, 6, 8] and info["params"] == result["params"]
    assert set(info["eigenvalues"]) == set(info["width_layers"])
    assert [len(info["eigenvalues"][name]) for name in info["width_layers"]] == [4, 6, 8]
    assert set(info["costs"]) == {"params", "flops"} and all(v > 0 for v in info["costs"]["params"].values())
    splits = load_splits(result["splits"])
    assert torch.allclose(splits[info["width_layers"][0]].eigenvalues,
                          torch.tensor(info["eigenvalues"][info["width_layers"][0]]), atol=1e-6)
    state = torch.load(result["checkpoint"], weights_only=True)
    assert state["widths"] == [4, 6, 8] and state["model"] == "small_cnn"


def test_child_grows_parent_by_plan(seed_run, tmp_path):
    _, _, seed = seed_run
    info = json.loads(Path(seed["indexes"]).read_text())
    first, third = info["width_layers"][0], info["width_layers"][2]
    plan = {first: [0, 3], third: [5]}
    child_params = resolve_params({}, dict(FAST, step=1, node_id="l0s1-test", parent="TSEED", parent_node="l0s0-test",
                                           parent_checkpoint=seed["checkpoint"], parent_splits=seed["splits"],
                                           split_plan=plan, n_split=3, widths=[6, 6, 9]))
    child = run_trial(child_params, tmp_path)
    child_info = json.loads(Path(child["indexes"]).read_text())
    assert child_info["widths"] == [6, 6, 9] and child["widths"] == "6,6,9"
    assert child["parent"] == "TSEED" and child["step"] == 1 and child["params"] > seed["params"]


def test_child_with_wrong_expected_widths_fails(seed_run, tmp_path):
    _, _, seed = seed_run
    info = json.loads(Path(seed["indexes"]).read_text())
    params = resolve_params({}, dict(FAST, step=1, parent_checkpoint=seed["checkpoint"], parent_splits=seed["splits"],
                                     split_plan={info["width_layers"][1]: [0]}, widths=[4, 6, 9]))
    with pytest.raises(RuntimeError, match="expected"):
        run_trial(params, tmp_path)


def test_split_child_starts_close_to_parent(seed_run):
    """Splitting with a small epsilon keeps the function (the paper's warm start)."""
    from nni_splitting import apply_splits
    from nni_splitting.common.data import load_dataset
    from nni_splitting.models import build_model

    _, _, seed = seed_run
    state = torch.load(seed["checkpoint"], weights_only=True)
    parent = build_model(state["model"], widths=state["widths"], **state["model_config"])
    parent.load_state_dict(state["state_dict"])
    parent.eval()
    splits = load_splits(seed["splits"])
    layer = next(iter(splits))
    child = apply_splits(parent, splits, {layer: [0, 1]}, epsilon=1e-3).eval()
    x = load_dataset("digits").test.tensors[0][:32]
    with torch.no_grad():
        assert torch.allclose(parent(x), child(x), atol=1e-2)


def test_missing_data_dir_fails_at_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "nni_splitting.nni.trial", "--output-dir", str(tmp_path), "--params",
                           json.dumps({"dataset": "cifar10", "data_dir": str(tmp_path / "no-cifar")})],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "CIFAR-10 not found" in proc.stderr and "data_dir" in proc.stderr


def test_bad_parameters_are_reported(tmp_path):
    with pytest.raises(ValueError, match="trial.epochs"):
        resolve_params({"epochs": "many"})


def test_splitting_failure_keeps_trained_model(tmp_path, monkeypatch):
    """If the splitting indexes cannot be computed, the trained network and its accuracy are still saved."""
    from nni_splitting.growth.strategies import S2DStrategy

    def broken(*args, **kwargs):
        raise RuntimeError("eigh did not converge")

    monkeypatch.setattr(S2DStrategy, "score", broken)
    result = run_trial(resolve_params({}, dict(FAST, widths=[2, 3, 4])), tmp_path)
    assert result["splitting_error"] == "RuntimeError: eigh did not converge"
    assert Path(result["checkpoint"]).exists() and result["splits"] == ""
    info = json.loads(Path(result["indexes"]).read_text())
    assert info["splitting_error"] and info["eigenvalues"] == {} and info["widths"] == [2, 3, 4]


def test_trial_writes_under_shared_storage_path(tmp_path, monkeypatch):
    """With a storage_path the trial writes to <storage_path>/<experiment id>/<trial id> and reports those paths."""
    from nni_splitting.nni.trial import main

    monkeypatch.chdir(tmp_path)
    reported = {}
    monkeypatch.setattr("nni.report_final_result", reported.update)
    share = tmp_path / "share"
    assert main(["--params", json.dumps(dict(FAST, widths=[2, 3, 4], storage_path=str(share)))]) == 0
    folder = share / "STANDALONE" / "STANDALONE"
    assert reported["indexes"] == str(folder / INDEX_FILE) and (folder / CHECKPOINT_FILE).exists()


def test_full_width_multiplier_sets_the_reference_of_the_ratios(tmp_path):
    """With full_width_multiplier 0.5 the ratios are against the half-width model (the protocol's "full")."""
    whole = run_trial(resolve_params({}, dict(FAST, widths=[2, 3, 4])), tmp_path / "a")
    half = run_trial(resolve_params({}, dict(FAST, widths=[2, 3, 4], full_width_multiplier=0.5)), tmp_path / "b")
    assert half["params"] == whole["params"] and half["params_ratio"] > 2.5 * whole["params_ratio"]
    with pytest.raises(ValueError, match="full_width_multiplier"):
        resolve_params({"full_width_multiplier": 2})


@pytest.mark.parametrize("settings", [{"epsilon_scale": "relative", "epsilon": 0.05},
                                      {"symmetry_breaking": "noise"}, {"symmetry_breaking": "bn_scale"}])
def test_child_network_uses_the_offspring_settings(seed_run, settings):
    """The ablation levers reach the trial's network: the grown weights differ from the plain split's."""
    from nni_splitting.nni.trial import build_network
    _, _, seed = seed_run
    info = json.loads(Path(seed["indexes"]).read_text())
    layer = info["width_layers"][1]
    base = dict(FAST, step=1, parent_checkpoint=seed["checkpoint"], parent_splits=seed["splits"],
                split_plan={layer: [0, 1]}, widths=[4, 8, 8])
    plain = build_network(resolve_params({}, dict(base, epsilon=settings.get("epsilon", 0.01))), None)
    varied = build_network(resolve_params({}, dict(base, **settings)), None)
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(v, varied.state_dict()[k])]
    assert changed, settings


def test_firefly_trials_score_candidates_and_grow_new_neurons(tmp_path):
    """growth_strategy='firefly': the trial saves Firefly candidates; a child grows by a split and a new neuron."""
    seed_params = resolve_params({}, dict(FAST, widths=[4, 6, 8], node_id="l0s0-ff", growth_strategy="firefly"))
    seed = run_trial(seed_params, tmp_path / "seed")
    info = json.loads(Path(seed["indexes"]).read_text())
    layer = info["width_layers"][1]
    scores = info["eigenvalues"][layer]
    assert len(scores) > 6  # 6 splits, then the new-neuron candidates
    plan = {layer: [0, 6]}  # split neuron 0, add new neuron 0
    child_params = resolve_params({}, dict(FAST, step=1, node_id="l0s1-ff", parent_checkpoint=seed["checkpoint"],
                                           parent_splits=seed["splits"], split_plan=plan, widths=[4, 8, 8],
                                           growth_strategy="firefly"))
    child = run_trial(child_params, tmp_path / "child")
    assert child["widths"] == "4,8,8" and child["params"] > seed["params"]
    with pytest.raises(ValueError, match="growth_strategy"):
        resolve_params({}, {"growth_strategy": "s4d"})


def test_tuner_strategy_reaches_the_trials():
    from nni_splitting.nni.tuner import SplittingTuner
    tuner = SplittingTuner(seed_widths=[2, 4, 8], strategy="firefly", trial={"epochs": 1})
    tuner.end_hook = None
    assert tuner.generate_multiple_parameters([0])[0]["growth_strategy"] == "firefly"
    with pytest.raises(ValueError, match="give one"):
        SplittingTuner(strategy="firefly", trial={"growth_strategy": "s2d"})


def test_s3d_trials_report_signed_indexes_and_grow_by_them(tmp_path):
    """growth_strategy='s3d': the index file holds min(lambda_min, -lambda_max / 2); a child grows by it."""
    from nni_splitting.growth.signed import signed_indexes
    seed_params = resolve_params({}, dict(FAST, widths=[4, 6, 8], node_id="l0s0-s3d", growth_strategy="s3d"))
    seed = run_trial(seed_params, tmp_path / "seed")
    info = json.loads(Path(seed["indexes"]).read_text())
    splits = load_splits(seed["splits"])
    layer = info["width_layers"][2]
    assert info["eigenvalues"][layer] == pytest.approx(signed_indexes(splits)[layer].tolist(), abs=1e-6)
    assert min(info["eigenvalues"][layer]) <= float(splits[layer].eigenvalues.min()) + 1e-6
    child_params = resolve_params({}, dict(FAST, step=1, node_id="l0s1-s3d", parent_checkpoint=seed["checkpoint"],
                                           parent_splits=seed["splits"], split_plan={layer: [0, 1]},
                                           widths=[4, 6, 10], growth_strategy="s3d"))
    assert run_trial(child_params, tmp_path / "child")["widths"] == "4,6,10"


def test_three_copy_s3d_trials_grow_two_neurons_per_split(tmp_path):
    """s3d_copies=3: the index file holds the three-copy index and added_per_split = 2; a child whose plan
    splits two neurons of a layer has four more there; a bad copy count is refused up front."""
    from nni_splitting.growth.signed import signed_indexes
    seed_params = resolve_params({}, dict(FAST, widths=[4, 6, 8], node_id="l0s0-s3d3", growth_strategy="s3d",
                                          s3d_copies=3))
    seed = run_trial(seed_params, tmp_path / "seed")
    info = json.loads(Path(seed["indexes"]).read_text())
    splits = load_splits(seed["splits"])
    layer = info["width_layers"][2]
    assert info["added_per_split"] == 2
    assert info["eigenvalues"][layer] == pytest.approx(signed_indexes(splits, copies=3)[layer].tolist(), abs=1e-6)
    child_params = resolve_params({}, dict(FAST, step=1, node_id="l0s1-s3d3", parent_checkpoint=seed["checkpoint"],
                                           parent_splits=seed["splits"], split_plan={layer: [0, 1]},
                                           widths=[4, 6, 12], growth_strategy="s3d", s3d_copies=3))
    assert run_trial(child_params, tmp_path / "child")["widths"] == "4,6,12"
    with pytest.raises(ValueError, match="s3d_copies"):
        resolve_params({}, {"growth_strategy": "s3d", "s3d_copies": 4})


def test_split_product_dtype_and_image_fraction_reach_the_phase(tmp_path, monkeypatch):
    """trial.split_product_dtype and trial.split_image_fraction are validated and handed to compute_splitting."""
    import nni_splitting.growth.strategies as trial_module  # where the trial's S2D strategy calls it
    seen = {}
    real = trial_module.compute_splitting

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(trial_module, "compute_splitting", spy)
    result = run_trial(resolve_params({}, dict(FAST, widths=[2, 3, 4], split_product_dtype="bfloat16",
                                               split_image_fraction=0.5)), tmp_path)
    assert seen["product_dtype"] == "bfloat16" and Path(result["splits"]).stat().st_size > 0
    assert seen["image_fraction"] == 0.5
    with pytest.raises(ValueError, match="split_product_dtype"):
        resolve_params({"split_product_dtype": "int8"})
    for bad in (0, 2, "all", True):
        with pytest.raises(ValueError, match="split_image_fraction"):
            resolve_params({"split_image_fraction": bad})
