"""Results of comparison experiments from NNI's own records: ``nni-splitting report ID [ID ...]`` (:mod:`nni_splitting.nni.cli`).

Reads every trial of the given experiments through NNI's REST API (``trial-jobs`` with their final
metrics; nothing from private files) and writes, into ``--out`` (default ``results/``):

* ``results.csv``: one row per trial (arm, method, seed, step, params, flops, params_ratio,
  accuracy = test accuracy, val_accuracy, epochs, wall_time, mac_epochs, total_mac_epochs,
  experiment_id, trial_id, status, widths, strides: a depth-grown MobileNet's block strides);
* ``results.md``: mean +- standard deviation over seeds per arm and step;
* ``compare.png``: test accuracy against parameter ratio and against FLOPs (the layout of the
  paper's Fig. 3: the size claim, at equal parameters or inference cost), and against the training
  compute behind each network (the compute-matched claim), one curve per arm.

Training compute is counted in MAC-epochs: one forward pass's multiply-accumulates (NNI's counter,
per sample) times the epochs trained. ``mac_epochs`` is a trial's own training; ``total_mac_epochs``
(:func:`add_training_compute`) all the training behind the network: a grown network's rounds along
its lineage, a pruned network's full-model training and its fine-tuning, a network trained from
scratch its own.

A running experiment is read on its port (``--port``); a stopped one is served for the time of
reading by ``nnictl view ID --port P`` and then stopped again (``--workdir`` when it was created
with ``experimentWorkingDirectory``).  Trials of the plain splitting tuner count as arm
``splitting``; trials of the HPO width search (``experiments/compare_digits_nas.yml``) as ``width``.
"""
from __future__ import annotations

import csv
import logging
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from nni_splitting.nni.claims import baseline_front, claims_markdown
from nni_splitting.nni import nnictl, rest
from nni_splitting.nni.arms import report_order
import nni_splitting.nni.summary as summaries
from nni_splitting.nni.summary import arm_key, is_search as _is_search, number as _num

__all__ = ["COLUMNS", "rows_from_rest", "rows_from_trials", "read_experiment", "read_experiment_trials", "aggregate", "add_training_compute",
           "write_csv",
           "write_markdown", "plot", "write_outputs", "markdown_summary", "search_summary", "read_csv"]

logger = logging.getLogger(__name__)


def _arm_key(arm: str):
    """Arms in the registry's report order (nni_splitting.nni.arms.report_order)."""
    return arm_key(arm, report_order())


def aggregate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """:func:`nni_splitting.nni.summary.aggregate` with the arms in the registry's report order."""
    return summaries.aggregate(rows, report_order())

COLUMNS = ["arm", "method", "seed", "step", "params", "flops", "params_ratio", "flops_ratio", "accuracy",
           "val_accuracy", "epochs", "wall_time", "mac_epochs", "total_mac_epochs", "experiment_id", "trial_id",
           "status", "widths", "strides"]


def rows_from_trials(trials: Iterable[Dict[str, Any]], experiment_id: str) -> List[Dict[str, Any]]:
    """Rows of :data:`COLUMNS` from :func:`nni_splitting.nni.rest.read_trials` entries (finished trials only)."""
    rows = []
    for trial in trials:
        result = trial.get("result")
        if not isinstance(result, dict):
            continue
        params = trial.get("parameters") or {}
        arm = result.get("arm") or ("splitting" if result.get("method") == "splitting" else
                                    ("width" if any(str(k).startswith("mult_") for k in params) else "unknown"))
        rows.append({
            "arm": arm, "method": result.get("method", arm), "seed": result.get("seed", params.get("seed", "")),
            "step": result.get("step", ""), "params": result.get("params"), "flops": result.get("flops"),
            "params_ratio": result.get("params_ratio"), "flops_ratio": result.get("flops_ratio"),
            "accuracy": result.get("test_accuracy", result.get("default")), "val_accuracy": result.get("val_accuracy"),
            "epochs": result.get("epochs", params.get("epochs", "")),
            "wall_time": result.get("wall_time", result.get("seconds", "")),
            "mac_epochs": result.get("mac_epochs", ""),
            "experiment_id": experiment_id, "trial_id": trial.get("id"), "status": trial.get("status"),
            "widths": result.get("widths", ""), "strides": result.get("strides", ""),
        })
    return rows


def rows_from_rest(base: str, experiment_id: str) -> List[Dict[str, Any]]:
    """Rows of every finished trial of the experiment answering at ``base`` (REST ``trial-jobs``)."""
    return rows_from_trials(rest.read_trials(base), experiment_id)


def _experiment_ports() -> Dict[str, int]:
    """``{id: port}`` of running experiments, from ``nnictl experiment list``."""
    proc = nnictl.run_nnictl(["experiment", "list"], check=False)
    ports = {}  # NNI 3.0 prints one line per experiment ("Id: ... Status: ... Port: ..."), no blank lines
    for match in re.finditer(r"Id:\s*(\S+)(.*?)(?=Id:|\Z)", proc.stdout, flags=re.DOTALL):
        port = re.search(r"Port:\s*(\d+)", match.group(2))
        if port:
            ports[match.group(1)] = int(port.group(1))
    return ports


def read_experiment(experiment_id: str, port: Optional[int] = None, workdir: Optional[str] = None,
                    timeout: float = 60) -> List[Dict[str, Any]]:
    """Rows of one experiment: on ``port`` if given or running, else through ``nnictl view`` (stopped after)."""
    return rows_from_trials(read_experiment_trials(experiment_id, port, workdir, timeout)[0], experiment_id)


def read_experiment_trials(experiment_id: str, port: Optional[int] = None, workdir: Optional[str] = None,
                           timeout: float = 60) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """``(trials, experiment profile)`` of one experiment (:func:`nni_splitting.nni.rest.read_trials`, REST
    ``experiment``): on ``port`` if given or running, else through ``nnictl view`` (stopped after)."""
    if port is None:
        port = _experiment_ports().get(experiment_id)
    if port is not None:
        base = rest.rest_url(port)
        return rest.read_trials(base), rest.rest(base, "experiment") or {}
    if workdir and not (Path(workdir).expanduser() / experiment_id).is_dir():
        raise RuntimeError(f"no experiment {experiment_id} in {workdir}")
    port = nnictl.free_port(8600)
    args = ["view", experiment_id, "--port", str(port)]
    if workdir:
        args += ["--experiment_dir", str(Path(workdir).expanduser().resolve())]
    proc = nnictl.run_nnictl(args, check=False, timeout=timeout)
    if proc.returncode != 0:
        hint = ("\n(NNI 3.0 cannot view a stopped nni.nas experiment: merge the results.csv that "
                "`nni-splitting nas --out` wrote while it ran, with --merge)"
                if "can not be customized in NAS experiment" in proc.stdout + proc.stderr else "")
        raise RuntimeError(f"nnictl view {experiment_id} failed: {proc.stdout}\n{proc.stderr}{hint}")
    base = rest.rest_url(port)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                rest.status(base)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        return rest.read_trials(base), rest.rest(base, "experiment") or {}
    finally:
        nnictl.stop(experiment_id)


def add_training_compute(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Fill ``mac_epochs`` where a trial did not report it (FLOPs x its own epochs) and ``total_mac_epochs``.

    ``epochs`` of a grown network and of a pruned one count their ancestors' / the full model's
    epochs too, so a row's own epochs are its ``epochs`` minus those of the previous step of its
    lineage (same arm and seed) or of the full model (same seed). Rows are changed in place.
    """
    full = {str(r.get("seed")): r for r in rows if r.get("arm") == "full"}
    lineages: Dict[tuple, List[dict]] = defaultdict(list)
    for row in rows:
        if row.get("method") == "splitting":
            lineages[(row.get("arm"), str(row.get("seed")))].append(row)

    def own(row: Dict[str, Any], before: float) -> Optional[float]:
        reported = _num(row.get("mac_epochs"))
        if reported is not None:
            return reported
        flops, epochs = _num(row.get("flops")), _num(row.get("epochs"))
        return None if flops is None or epochs is None else flops * (epochs - before)

    for members in lineages.values():
        total, epochs_before = 0.0, 0.0
        for row in sorted(members, key=lambda r: _num(r.get("step")) or 0):
            row["mac_epochs"] = own(row, epochs_before)
            total = None if total is None or row["mac_epochs"] is None else total + row["mac_epochs"]
            row["total_mac_epochs"] = total
            epochs_before = _num(row.get("epochs")) or epochs_before
    for row in rows:
        if row.get("method") == "splitting":
            continue
        pruned = row.get("method") == "pruning"
        parent = full.get(str(row.get("seed"))) if pruned else None
        if pruned and parent is None:  # its epochs include a full model's that is not in the rows
            row["mac_epochs"] = _num(row.get("mac_epochs"))
            row["total_mac_epochs"] = None
            continue
        before = (_num(parent.get("epochs")) or 0.0) if parent is not None else 0.0
        row["mac_epochs"] = own(row, before)
        base = own(parent, 0.0) if parent is not None else 0.0
        row["total_mac_epochs"] = None if row["mac_epochs"] is None or base is None else base + row["mac_epochs"]
    return rows


def read_csv(path) -> List[Dict[str, Any]]:
    """Rows of a ``results.csv`` written by :func:`write_csv` (e.g. by ``nni-splitting nas``)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [dict(row) for row in csv.DictReader(handle)]
    for row in rows:  # the keys that group rows: as REST rows have them
        for key in ("seed", "step"):
            if str(row.get(key, "")).lstrip("-").isdigit():
                row[key] = int(row[key])
    missing = [c for c in ("arm", "params_ratio", "accuracy", "trial_id") if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path} is not a results.csv of nni-splitting (missing columns {missing})")
    return rows


def write_csv(rows: List[Dict[str, Any]], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (_arm_key(r["arm"]), str(r["seed"]), _num(r.get("params")) or 0)):
            writer.writerow(row)
    return path


def _fmt(value, digits=4):
    return "" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def markdown_summary(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of :func:`aggregate` (accuracy in %, mean +- std over seeds)."""
    lines = ["| arm | method | step | params ratio (%) | params | MFLOPs | test acc. (%) | n | epochs | "
             "training (G MAC-epochs) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    def f(value, scale=1.0, digits=1):
        return "" if value is None else f"{value * scale:.{digits}f}"

    for s in aggregate(rows):
        acc = f"{100 * s['accuracy']:.2f} ± {100 * (s['accuracy_std'] or 0):.2f}"
        lines.append(f"| {s['arm']} | {s['method']} | {s['step']} | {f(s['params_ratio'], 100, 2)} | "
                     f"{f(s['params'], 1, 0)} | {f(s['flops'], 1e-6, 4)} | {acc} | {s['n']} | {f(s['epochs'])} | "
                     f"{f(s['total_mac_epochs'], 1e-9, 2)} | {f(s['wall_time'], 1, 0)} |")
    return "\n".join(lines)


def search_summary(rows: List[Dict[str, Any]]) -> str:
    """Per width search: the sample a user would pick (best validation accuracy) and what the search cost."""
    lines = []
    for arm in sorted({r["arm"] for r in rows if _is_search(r)}, key=_arm_key):
        samples = [r for r in rows if r["arm"] == arm]
        trained = [r for r in samples if _num(r.get("accuracy")) is not None and _num(r.get("val_accuracy")) is not None]
        if not trained:
            continue
        best = max(trained, key=lambda r: (_num(r["val_accuracy"]), -(_num(r.get("params")) or 0)))
        epochs = sum(_num(r.get("epochs")) or 0 for r in samples)
        cost = sum(_num(r.get("mac_epochs")) or (_num(r.get("flops")) or 0) * (_num(r.get("epochs")) or 0)
                   for r in samples)  # the whole search, over-budget samples (0 epochs) included
        lines.append(f"| {arm} | {len(samples)} | {len(trained)} | {epochs:.0f} | {cost / 1e9:.2f} | {best['trial_id']} | "
                     f"{100 * _num(best['params_ratio']):.2f} | {100 * _num(best['val_accuracy']):.2f} | "
                     f"{100 * _num(best['accuracy']):.2f} |")
    if not lines:
        return ""
    return "\n".join(["| search | samples | trained | epochs (all samples) | search cost (G MAC-epochs) | "
                      "picked (best val.) | params ratio (%) | val. acc. (%) | test acc. (%) |",
                      "|---|---|---|---|---|---|---|---|---|", *lines])


def write_markdown(rows: List[Dict[str, Any]], path, title: str = "") -> Path:
    path = Path(path)
    ids = sorted({r["experiment_id"] for r in rows})
    searches = search_summary(rows)
    verdicts = claims_markdown(rows)
    text = (f"# Comparison{': ' + title if title else ''}\n\nExperiments: {', '.join(ids)}; "
            f"{len(rows)} trials. Test accuracy, mean ± standard deviation over seeds (n).\n\n"
            f"{markdown_summary(rows)}\n"
            + (f"\nWidth searches: the sample picked by validation accuracy (what a user of the search would "
               f"keep) and the search's cost in training epochs.\n\n{searches}\n" if searches else "")
            + (f"\nClaims (nni_splitting.nni.claims): a growth configuration wins at a size when it is >= 1 point above "
               f"every baseline within 10 % of its parameters (pruners, plain networks, width searches) and not "
               f"below the baselines' accuracy-vs-FLOPs front at its FLOPs; a grown architecture from scratch "
               f"when it is >= the best plain network at equal parameters.\n\n{verdicts}\n" if verdicts else ""))
    path.write_text(text, encoding="utf-8")
    return path


def plot(rows: List[Dict[str, Any]], path, title: str = "") -> Path:
    """Accuracy vs parameter ratio and vs FLOPs, one curve per arm (mean +- std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = aggregate(rows)
    fig, axes = plt.subplots(1, 3, figsize=(19, 5))
    arms = sorted({s["arm"] for s in summary}, key=_arm_key)
    markers = "o^sv<>Dpx*h+"
    for i, arm in enumerate(arms):
        points = sorted((s for s in summary if s["arm"] == arm), key=lambda s: s["params_ratio"] or 0)
        if arm == "full":
            for ax in axes:
                ax.axhline(100 * points[0]["accuracy"], color="gray", ls="--", lw=1,
                           label=f"full width ({100 * points[0]['accuracy']:.1f}%)")
            continue
        style = dict(marker=markers[i % len(markers)], capsize=2, label=arm,
                     lw=2.5 if arm == "splitting" else 1.2, ls="" if _is_search(points[0]) else "-",
                     color="black" if arm == "splitting" else plt.cm.tab20(i % 20), zorder=3 if arm == "splitting" else 2)
        acc = [100 * s["accuracy"] for s in points]
        err = [100 * (s["accuracy_std"] or 0) for s in points]
        axes[0].errorbar([100 * s["params_ratio"] for s in points], acc, yerr=err, **style)
        axes[1].errorbar([s["flops"] / 1e6 for s in points], acc, yerr=err, **style)
        trained = [(s["total_mac_epochs"] / 1e9, a, e) for s, a, e in zip(points, acc, err) if s["total_mac_epochs"]]
        if trained:
            axes[2].errorbar(*zip(*[(x, a) for x, a, _ in trained]), yerr=[e for _, _, e in trained], **style)
    front = baseline_front(rows, summary)
    if len(front) > 1:
        axes[1].plot([f / 1e6 for f, _ in front], [100 * a for _, a in front], color="gray", ls=":", lw=2,
                     label="baselines' front", zorder=1)
    axes[0].set_xlabel("parameters (% of the full-width model)")
    axes[1].set_xlabel("MFLOPs (multiply-adds)")
    axes[2].set_xlabel("training compute behind the network (G MAC-epochs)")
    axes[0].set_title("size claim: accuracy at equal parameters", fontsize=10)
    axes[1].set_title("inference cost: accuracy at equal FLOPs", fontsize=10)
    axes[2].set_title("compute-matched claim: accuracy at equal training compute", fontsize=10)
    from matplotlib.ticker import FuncFormatter
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if str(f"{x:g}")[0] in "1235" else ""))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(rows: List[Dict[str, Any]], out, title: str = "", prefix: str = "") -> Dict[str, Path]:
    add_training_compute(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"csv": write_csv(rows, out / f"{prefix}results.csv"),
            "md": write_markdown(rows, out / f"{prefix}results.md", title),
            "png": plot(rows, out / f"{prefix}compare.png", title)}
