"""The strong baselines of the CIFAR comparison (issue 25): the small CIFAR families, the ``plain`` arm
(another family at a step's parameter count), its place in the comparison policy, and the two-axis
claims (equal parameters, the baselines' accuracy-vs-FLOPs front)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nni_splitting.nni.arms import resolve_arm_params, run_arm
from nni_splitting.nni.claims import accuracy_front, claims, claims_markdown, front_accuracy
from nni_splitting.nni.compare import CompareClassArgsValidator, CompareTuner
from nni_splitting.growth.counting import count_model
from nni_splitting.graph import find_neuron_groups, trace_model
from nni_splitting.models import build_model, current_widths, scale_widths

CIFAR = torch.randn(1, 3, 32, 32)


def test_mobilenet_cifar_is_mobilenet_v1s_first_six_blocks():
    strong = build_model("mobilenet_cifar", widths=scale_widths("mobilenet_cifar", 0.75)).eval()
    assert current_widths(strong) == [24, 48, 96, 96, 192, 192, 384]
    flops, params = count_model(strong, CIFAR)
    assert params == 157_690 and 11e6 < flops < 12e6
    assert strong(CIFAR).shape == (1, 10)
    groups, _ = find_neuron_groups(trace_model(strong, CIFAR), None, 3.0)
    assert sorted(groups) == ["features.block%d.pw.conv" % i for i in range(1, 7)] + ["features.stem.conv"]


def test_resnet20_has_he_et_al_size_and_only_its_inner_convs_split():
    model = build_model("resnet20").eval()
    flops, params = count_model(model, CIFAR)
    assert 0.26e6 < params < 0.28e6 and 40e6 < flops < 42e6  # ResNet-20: 0.27 M parameters
    assert model(CIFAR).shape == (1, 10)
    groups, excluded = find_neuron_groups(trace_model(model, CIFAR), None, 3.0)
    assert sorted(groups) == sorted(f"features.stage{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))
    assert "residual" in excluded["features.stem.conv"] or "add" in excluded["features.stem.conv"]
    narrow = build_model("resnet20", widths=scale_widths("resnet20", 0.25))
    assert current_widths(narrow) == [4, 8, 16, 4, 4, 4, 8, 8, 8, 16, 16, 16]


def test_plain_arm_trains_another_family_at_the_target_parameters(tmp_path):
    params = resolve_arm_params({"arm": "plain", "model": "small_cnn", "plain_model": "resnet20", "target_params": 3000,
                                 "dataset": "digits", "epochs": 1, "retrain_epochs": "round", "num_threads": 1})
    result = run_arm(params, tmp_path)
    assert result["arm"] == "plain_resnet20" and result["family"] == "resnet20" and result["method"] == "width"
    assert abs(result["params"] - 3000) < 400 and len(result["widths"].split(",")) == 12
    full = count_model(build_model("small_cnn", in_channels=1).eval(), torch.zeros(1, 1, 8, 8))[1]
    assert math.isclose(result["params_ratio"], result["params"] / full)  # against the comparison's full model
    assert result["epochs"] == 1 and 0.0 <= result["default"] <= 1.0
    widened = resolve_arm_params({"arm": "plain", "model": "small_cnn", "plain_model": "small_cnn",
                                  "plain_widths": [4, 4, 4], "arm_label": "plain_equal", "target_params": 2000,
                                  "dataset": "digits", "epochs": 1, "retrain_epochs": "round"})
    result = run_arm(widened, tmp_path / "equal")
    widths = [int(w) for w in result["widths"].split(",")]
    assert result["arm"] == "plain_equal" and len(set(widths)) == 1  # the equal-width shape, widened


def _report_step(tuner, tmp_path, node, params, widths, step_name):
    info = {"widths": widths, "width_layers": ["a", "b"], "eigenvalues": {"a": [-1.0] * widths[0],
                                                                         "b": [-0.5] * widths[1]}}
    (tmp_path / f"{step_name}.json").write_text(json.dumps(info))
    tuner.receive_trial_result(0, node, {"default": 0.5, "node": node["node_id"], "params": params, "epochs": 1,
                                         "widths": ",".join(map(str, widths)),
                                         "indexes": str(tmp_path / f"{step_name}.json")})


def test_comparison_emits_one_plain_arm_per_family_at_each_baseline_step(tmp_path):
    families = [{"model": "resnet20", "label": "plain_resnet20"},
                {"model": "mobilenet_v1", "widths": [12] * 14, "label": "plain_equal_width"}]
    tuner = CompareTuner(max_steps=1, beam=1, arms=["plain"], plain_families=families, seed_widths=[2, 4],
                         trial={"epochs": 1})
    tuner.end_hook = None
    seed = tuner.generate_multiple_parameters([0])[0]
    _report_step(tuner, tmp_path, seed, 100, [2, 4], "seed")
    sent = tuner.generate_multiple_parameters(list(range(1, 6)))
    plain = sorted((p["arm_label"], p["plain_model"], p["target_params"], p["step"]) for p in sent if p["arm"] == "plain")
    assert plain == [("plain_equal_width", "mobilenet_v1", 100, 0), ("plain_resnet20", "resnet20", 100, 0)]
    assert next(p for p in sent if p.get("plain_model") == "mobilenet_v1")["plain_widths"] == [12] * 14


@pytest.mark.parametrize("families,match", [
    ("resnet20", "list"), ([{"model": "nope"}], "unknown model"), ([{"widths": [1]}], "mapping with model"),
    ([{"model": "resnet20", "widths": [1, 2]}], "expected 12 widths"), ([{"model": "resnet20", "label": ""}], "label"),
    ([{"model": "resnet20", "colour": "red"}], "mapping with model")])
def test_bad_plain_families_are_refused_at_start(families, match):
    with pytest.raises(ValueError, match=match):
        CompareClassArgsValidator().validate_class_args(arms=["plain"], plain_families=families)


def test_accuracy_front_is_the_pareto_front_interpolated_in_log_flops():
    front = accuracy_front([(1e6, 0.5), (2e6, 0.45), (4e6, 0.7), (4e6, 0.6), (8e6, 0.65)])
    assert front == [(1e6, 0.5), (4e6, 0.7)]  # dominated points dropped
    assert front_accuracy(front, 5e5) is None  # no baseline that cheap
    assert math.isclose(front_accuracy(front, 2e6), 0.6)  # half way in log(FLOPs)
    assert front_accuracy(front, 1e7) == 0.7


def _row(arm, method, step, seed, params, flops, accuracy, val=None, trial=""):
    return {"arm": arm, "method": method, "step": step, "seed": seed, "params": params, "flops": flops,
            "params_ratio": params / 1e5, "accuracy": accuracy, "val_accuracy": val, "trial_id": trial or f"{arm}{seed}"}


def test_claims_need_both_axes():
    rows = []
    for seed, noise in enumerate((-0.005, 0.0, 0.005)):
        rows += [_row("firefly", "splitting", 1, seed, 10_000, 1.6e6, 0.64 + noise),    # +2 pts at equal params
                 _row("firefly", "splitting", 3, seed, 40_000, 9e6, 0.70 + noise),      # +2 pts, but below the front
                 _row("l1", "pruning", 1, seed, 10_100, 1e6, 0.55 + noise),
                 _row("plain_mobilenet_cifar", "width", 1, seed, 9_800, 1.5e6, 0.62 + noise),
                 _row("plain_mobilenet_cifar", "width", 3, seed, 40_500, 4e6, 0.68 + noise),
                 _row("firefly_scratch", "retrain", 3, seed, 40_000, 9e6, 0.66 + noise)]
    rows.append(_row("hpo_tpe", "width_search", "t1", 0, 39_000, 8e6, 0.75, val=0.74, trial="s1"))
    rows.append(_row("hpo_tpe", "width_search", "t2", 0, 60_000, 8e6, 0.80, val=0.79, trial="s2"))  # over 40k: not picked
    verdicts = {(v["arm"], v["step"]): v for v in claims(rows)}
    small = verdicts[("firefly", 1)]
    assert small["best_baseline"] == "plain_mobilenet_cifar" and math.isclose(small["margin"], 0.02)
    assert small["wins_params"] and small["wins_flops"] and small["wins"]
    large = verdicts[("firefly", 3)]
    assert large["best_baseline"] == "hpo_tpe" and not large["wins_params"]  # the search's pick: 75 %
    assert not large["wins_flops"] and large["front_accuracy"] > 0.75 and large["wins"] is False
    architecture = verdicts[("firefly_scratch", 3)]
    assert architecture["claim"] == "architecture" and architecture["best_baseline"] == "plain_mobilenet_cifar"
    assert architecture["wins"] is False
    assert "| growth | firefly | 1 | 3 |" in claims_markdown(rows)


def test_width_search_in_the_strong_family_samples_under_the_budget(tmp_path):
    """The TPE config's trial command, resolved as a trial would: a sample over 10 % of the strong model is
    not trained; one under it is the strong family at the sampled per-layer widths."""
    import shlex

    import nni_helpers as ex
    from nni_splitting.nni.arms import resolve_arm_params
    from nni_splitting.baselines import load_search_space, widths_from_params

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    config = ex.load_config(root / "experiments" / "cifar_strong_width_search.yml")
    space = load_search_space("mobilenet_cifar")
    assert len(space) == 7 and config["tuner"]["name"] == "TPE"
    overrides = json.loads(shlex.split(config["trialCommand"])[-1])
    assert overrides["max_params_ratio"] == 0.10 and overrides["full_width_multiplier"] == 0.75
    large = resolve_arm_params({f"mult_{i}": 0.75 for i in range(7)}, dict(overrides, dataset="digits"))
    assert widths_from_params("mobilenet_cifar", large) == [24, 48, 96, 96, 192, 192, 384]
    small = resolve_arm_params({f"mult_{i}": 0.0625 for i in range(7)}, dict(overrides, dataset="digits"))
    assert widths_from_params("mobilenet_cifar", small) == [2, 4, 8, 8, 16, 16, 32]
    over = run_arm(dict(large, epochs=1), tmp_path / "over")
    assert over["over_budget"] == 1 and over["default"] == 0 and over["epochs"] == 0
    under = run_arm(dict(small, epochs=1), tmp_path / "under")
    assert "over_budget" not in under and under["params_ratio"] <= 0.10 and under["arm"] == "hpo_tpe_10"


@pytest.mark.parametrize("name", ["cifar_strong.yml", "cifar_strong_seeds.yml"])
def test_strong_comparison_configs_build_the_tuner(name):
    import nni_helpers as ex

    config = ex.load_config(__import__("pathlib").Path(__file__).resolve().parent.parent / "experiments" / name)
    args = config["tuner"]["classArgs"]
    CompareClassArgsValidator().validate_class_args(**args)
    tuner = CompareTuner(**args)
    tuner.end_hook = None
    assert args["model"] == "mobilenet_cifar" and args["trial"]["full_width_multiplier"] == 0.75
    assert {f["label"] for f in args["plain_families"]} == {"plain_mobilenet_cifar", "plain_equal_width", "plain_resnet20"}
    assert sorted(tuner.pruners) == ["fpgm", "l1", "taylor"]
    seeds = sorted(int(entry.get("seed", args["trial"]["seed"])) for entry in args["lineage_settings"])
    assert seeds == ([0] if name == "cifar_strong.yml" else [1, 2])


def test_an_arm_is_one_registry_entry(tmp_path):
    """A toy arm registered here: the comparison accepts its switch, queues it by its own rule at each
    reported step, `python -m nni_splitting.nni.arms` runs it, and the report orders it after the others."""
    from nni_splitting.nni import arms
    from nni_splitting.nni.arms import ARM_SPECS, ArmOutcome, ArmSpec, register_arm, report_order

    def run(ctx):
        model = build_model("small_cnn", widths=[2, 2, 2], **ctx.kwargs)
        return ArmOutcome(model, 0.5, 0.0, {"toy_column": 1})

    register_arm("toy", ArmSpec(run, "toy_family", "toy", "toy", lambda view: [{"target_params": view.result["params"]}]))
    try:
        tuner = CompareTuner(max_steps=1, beam=1, arms=["toy"], seed_widths=[2, 4], trial={"epochs": 1})
        tuner.end_hook = None
        seed = tuner.generate_multiple_parameters([0])[0]
        _report_step(tuner, tmp_path, seed, 123, [2, 4], "seed")
        sent = tuner.generate_multiple_parameters(list(range(1, 5)))
        toy = [p for p in sent if p["arm"] == "toy"]
        assert len(toy) == 1 and toy[0]["target_params"] == 123 and toy[0]["step"] == 0
        result = run_arm(resolve_arm_params({"arm": "toy", "model": "small_cnn", "dataset": "digits"}), tmp_path)
        assert result["arm"] == "toy" and result["method"] == "toy_family" and result["toy_column"] == 1
        assert report_order()[-1] == "toy"
    finally:
        ARM_SPECS.pop("toy")
    assert "toy" not in arms.comparison_switches()
