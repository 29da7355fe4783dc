"""What the CLI prints about a running or finished experiment: progress lines and the lineage table."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

__all__ = ["lineage_rows", "format_table", "best_row", "progress_printer", "COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of the lineage table, in order.
COLUMNS = ["lineage", "step", "trial", "parent", "status", "widths", "splits", "params", "flops", "val_acc",
           "test_acc"]


def lineage_rows(trials: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per trial (from :func:`~nni_splitting.nni.rest.read_trials`), ordered by lineage and step.

    A trial's own result (``lineage``, ``step``, ``parent``, ``widths``, ``n_split``) wins over NNI's
    record of its parameters: NNI 3.0's local training service hands parameters to trials
    first-in-first-out, so with several trials starting together (or a trial killed before it read
    its parameters) NNI may file a trial under another trial's parameters.
    """
    rows = []
    for trial in trials:
        params, result = trial["parameters"] or {}, trial["result"] or {}

        def pick(key, param_key=None):
            return result[key] if key in result else params.get(param_key or key, "")

        rows.append({
            "lineage": pick("lineage"), "step": pick("step"), "trial": trial["id"], "parent": pick("parent"),
            "status": trial["status"],
            "widths": result.get("widths") or ",".join(str(w) for w in params.get("widths") or []),
            "splits": pick("n_split"), "params": result.get("params"), "flops": result.get("flops"),
            "val_acc": result.get("val_accuracy"), "test_acc": result.get("default"),
        })
    rows.sort(key=lambda r: (str(r["lineage"]), r["step"] if isinstance(r["step"], int) else -1))
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Plain-text table of :func:`lineage_rows`."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value)

    table = [COLUMNS] + [[cell(r.get(c)) for c in COLUMNS] for r in rows]
    sizes = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(s) for v, s in zip(line, sizes)).rstrip() for line in table)


def best_row(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The succeeded row with the best validation accuracy (fewer parameters on ties), else None."""
    done = [r for r in rows if r["status"] == "SUCCEEDED" and isinstance(r.get("val_acc"), (int, float))]
    return max(done, key=lambda r: (r["val_acc"], -(r.get("params") or 0)), default=None)


def progress_printer(started: float, check: Optional[Callable[[str, List[str]], Optional[str]]] = None):
    """An ``on_poll(state, trial_states)`` for :func:`~nni_splitting.nni.rest.wait` that prints changes.

    ``check``, if given, is called on every poll and its answer returned (a string ends the wait).
    """
    last: Dict[str, Any] = {}

    def report(state: str, trials: List[str]) -> Optional[str]:
        summary = {s: trials.count(s) for s in sorted(set(trials))}
        if (state, summary) != (last.get("state"), last.get("summary")):
            counts = ", ".join(f"{n} {s.lower()}" for s, n in summary.items()) or "no trial yet"
            print(f"[{time.time() - started:6.0f}s] {state}: {counts}", flush=True)
            last.update(state=state, summary=summary)
        return check(state, trials) if check is not None else None
    return report
