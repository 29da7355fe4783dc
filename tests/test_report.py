"""``nni_splitting.nni.report`` on synthetic NNI records (the real-experiment path is in tests/test_compare.py:
``test_report_reads_the_experiment`` (REST of a running experiment) and
``test_report_of_a_stopped_experiment_through_nnictl_view``).  A few seconds."""
from __future__ import annotations

import csv

import pytest

from nni_splitting.nni import report
from nni_splitting.nni.cli import main as cli_main


def _trials():
    trials = []
    for seed in (0, 1, 2):
        for arm, method in (("splitting", "splitting"), ("l1", "pruning"), ("uniform", "width")):
            for step, params in ((0, 500), (1, 1000)):
                trials.append({"id": f"{arm}{seed}{step}", "status": "SUCCEEDED", "parameters": {"arm": arm},
                               "result": {"default": 0.5 + 0.1 * step + 0.01 * seed + (0.05 if arm == "splitting" else 0),
                                          "val_accuracy": 0.6, "arm": arm, "method": method, "seed": seed,
                                          "step": step, "params": params, "flops": params * 20,
                                          "params_ratio": params / 94186, "flops_ratio": 0.01, "epochs": 6 * (step + 1),
                                          "wall_time": 10.0 * (step + 1)}})
    trials.append({"id": "full0", "status": "SUCCEEDED", "parameters": {},
                   "result": {"default": 0.98, "arm": "full", "method": "full", "seed": 0, "step": 0, "params": 94186,
                              "flops": 2.4e6, "params_ratio": 1.0, "epochs": 6, "wall_time": 9.0}})
    trials.append({"id": "failed", "status": "FAILED", "parameters": {"arm": "l1"}, "result": None})
    # a plain splitting-tuner trial (no arm) and a width-search trial (mult_<i> parameters)
    trials.append({"id": "plain", "status": "SUCCEEDED", "parameters": {"node_id": "x"},
                   "result": {"default": 0.7, "method": "splitting", "step": 2, "params": 2000, "flops": 1,
                              "params_ratio": 0.02, "seconds": 3.0}})
    trials.append({"id": "tpe", "status": "SUCCEEDED", "parameters": {"mult_0": 0.25, "mult_1": 0.5, "mult_2": 1},
                   "result": {"default": 0.9, "arm": "width", "method": "width_search", "params": 30000,
                              "flops": 1e6, "params_ratio": 0.3, "epochs": 18, "wall_time": 4.0}})
    return trials


def test_rows_one_per_finished_trial_with_columns(tmp_path):
    rows = report.rows_from_trials(_trials(), "EXP")
    assert len(rows) == 21  # 18 arm trials + full + plain splitting + width search; the failed one has no result
    assert {r["arm"] for r in rows} == {"splitting", "l1", "uniform", "full", "width"}
    assert next(r for r in rows if r["trial_id"] == "plain")["wall_time"] == 3.0
    paths = report.write_outputs(rows, tmp_path, title="synthetic")
    with open(paths["csv"], newline="") as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 21 and list(read[0]) == report.COLUMNS
    assert all(r["experiment_id"] == "EXP" and r["trial_id"] for r in read)
    assert paths["png"].stat().st_size > 10_000
    text = paths["md"].read_text()
    assert "| splitting | splitting | 1 |" in text and "± " in text


def test_aggregate_mean_and_spread_over_seeds():
    summary = report.aggregate(report.rows_from_trials(_trials(), "EXP"))
    split1 = next(s for s in summary if s["arm"] == "splitting" and s["step"] == 1 and s["n"] == 3)
    assert split1["accuracy"] == pytest.approx(0.66) and split1["accuracy_std"] == pytest.approx(0.01)
    assert split1["epochs"] == 12 and split1["wall_time"] == 20
    assert summary[0]["arm"] == "splitting"  # ordered by arm, then ratio


def test_cli_refuses_unknown_experiment(tmp_path, capsys):
    assert cli_main(["report", "doesnotexist", "--out", str(tmp_path), "--workdir", str(tmp_path)]) == 1
    assert "cannot read doesnotexist" in capsys.readouterr().err


def test_search_summary_picks_by_validation_not_test():
    def sample(trial_id, val, test, ratio, epochs=24.0):
        return {"id": trial_id, "status": "SUCCEEDED", "parameters": {},
                "result": {"default": val or 0.0, "val_accuracy": val, "test_accuracy": test, "arm": "nas_tpe",
                           "method": "width_search", "params": int(ratio * 1e5), "flops": 1e8, "params_ratio": ratio,
                           "epochs": epochs, "wall_time": 1.0}}
    trials = [sample("a", 0.90, 0.99, 0.02), sample("b", 0.95, 0.91, 0.03), sample("over", None, None, 0.4, 0.0)]
    rows = report.rows_from_trials(trials, "EXP")
    assert [r["accuracy"] for r in rows] == [0.99, 0.91, None]  # the table shows test accuracy ...
    line = report.search_summary(rows).splitlines()[-1]
    # ... but the search picks by validation: b, not the test-best a; 3 samples, 2 trained, 48 epochs in all,
    # 48 x 1e8 = 4.8 G MAC-epochs of search
    assert line.startswith("| nas_tpe | 3 | 2 | 48 | 4.80 | b | 3.00 | 95.00 | 91.00 |"), line
    assert report.search_summary(report.rows_from_trials(_trials()[:6], "EXP")) == ""


def test_training_compute_counts_ancestors_and_the_full_model():
    """MAC-epochs behind each network: a lineage's rounds add up; a pruned net carries the full model's training."""
    rows = [{"arm": "full", "method": "full", "seed": 0, "step": 0, "flops": 1000.0, "epochs": 30},
            {"arm": "splitting", "method": "splitting", "seed": 0, "step": 0, "flops": 100.0, "epochs": 30},
            {"arm": "splitting", "method": "splitting", "seed": 0, "step": 1, "flops": 200.0, "epochs": 60,
             "mac_epochs": 6000.0},  # reported by the trial: taken as is
            {"arm": "splitting", "method": "splitting", "seed": 0, "step": 2, "flops": 400.0, "epochs": 90},
            {"arm": "l1", "method": "pruning", "seed": 0, "step": 2, "flops": 150.0, "epochs": 50.0},
            {"arm": "scratch_round", "method": "retrain", "seed": 0, "step": 2, "flops": 400.0, "epochs": 30.0},
            {"arm": "l1", "method": "pruning", "seed": 5, "step": 2, "flops": 150.0, "epochs": 50.0}]  # no full model
    report.add_training_compute(rows)
    total = {(r["arm"], r["seed"], r["step"]): r["total_mac_epochs"] for r in rows}
    assert total[("splitting", 0, 0)] == 3000 and total[("splitting", 0, 1)] == 9000
    assert total[("splitting", 0, 2)] == 9000 + 400 * 30
    assert total[("l1", 0, 2)] == 1000 * 30 + 150 * 20  # the full model's 30 epochs, then 20 of fine-tuning
    assert total[("scratch_round", 0, 2)] == 400 * 30 and total[("full", 0, 0)] == 30000
    assert total[("l1", 5, 2)] is None  # its epochs include a full model's that is not among the rows


def test_running_experiments_ports_from_nnictl_one_line_each(monkeypatch):
    """NNI 3.0's ``nnictl experiment list`` prints one line per experiment, no blank line between them:
    every running experiment's port is found (a second one used to fall through to ``nnictl view``)."""
    import subprocess
    listing = ("----------------------------------------------------------------------------------------\n"
               "                Experiment information\n"
               "Id: mc0urznq    Name: search    Status: RUNNING    Port: 8081    Platform: local    StartTime: x\n"
               "Id: 3jmfp9nc    Name: depth    Status: RUNNING    Port: 8082    Platform: local    StartTime: y\n"
               "----------------------------------------------------------------------------------------\n")
    monkeypatch.setattr(report.nnictl, "run_nnictl",
                        lambda args, check=True, **kw: subprocess.CompletedProcess(args, 0, listing, ""))
    assert report._experiment_ports() == {"mc0urznq": 8081, "3jmfp9nc": 8082}
