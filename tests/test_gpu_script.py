"""CPU smoke test of the GPU protocol script (experiments/cifar_gpu.py) on a real CIFAR-10 export.

The script itself is sized for one H200 (see its docstring); here it runs the same code path on the
CPU with 20 images per class, tiny widths and one epoch per round, and its CSVs are checked.
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("cifar_gpu", ROOT / "experiments" / "cifar_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_runs_every_arm_on_the_cpu(cifar_small, tmp_path):
    out = tmp_path / "out"
    code = _script().main(["--data-dir", str(cifar_small), "--out", str(out), "--device", "cpu",
                           "--val-fraction", "0.1", "--full-width", "0.25", "--seed-multiplier", "0.0625",
                           "--rounds", "1", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "64",
                           "--split-samples", "64", "--fraction", "0.5"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    arms = [(r["arm"], int(r["step"])) for r in rows]
    assert arms == [("full", 0), ("splitting", 0), ("splitting", 1), ("scratch_round", 1), ("uniform_round", 1),
                    ("plain_equal_width", 1), ("plain_resnet20", 1), ("l1", 1), ("fpgm", 1), ("taylor", 1)]
    assert rows[1]["widths"] == "2,4,8,8,16,16,32"  # the strong family's own shape at 1/16 width
    for plain in ("uniform_round", "plain_equal_width", "plain_resnet20"):
        row = next(r for r in rows if r["arm"] == plain)
        assert row["method"] == "width" and abs(int(row["params"]) - int(rows[2]["params"])) / int(rows[2]["params"]) < 0.25
    assert len(set(next(r for r in rows if r["arm"] == "plain_equal_width")["widths"].split(","))) == 1
    grown, seed = (next(r for r in rows if r["arm"] == "splitting" and int(r["step"]) == s) for s in (1, 0))
    assert int(grown["params"]) > int(seed["params"])
    uniform = next(r for r in rows if r["arm"] == "uniform_round")
    assert abs(int(uniform["params"]) - int(grown["params"])) / int(grown["params"]) < 0.25
    for pruner in ("l1", "fpgm", "taylor"):
        pruned = next(r for r in rows if r["arm"] == pruner)
        assert pruned["method"] == "pruning" and abs(float(pruned["params_ratio"]) - float(grown["params_ratio"])) < 0.05
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    phases = list(csv.DictReader(open(out / "phases.csv")))
    assert len(phases) == 1 and float(phases[0]["ratio"]) > 0 and int(phases[0]["n_split"]) > 0


def test_gpu_script_says_what_is_missing(tmp_path, capsys):
    assert _script().main(["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "CIFAR" in capsys.readouterr().err
