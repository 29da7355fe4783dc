"""Turn a CSV written by ``bench_splitting.py`` into the Markdown tables of docs/benchmarks.md.

Usage: ``python benchmarks/to_markdown.py benchmarks/results_h200.csv``
"""
from __future__ import annotations

import csv
import math
import sys

LAYER_COLUMNS = [
    ("d", "d"), ("layer", None), ("samples", "N"), ("exact_neurons", "exact on"), ("exact_s", "exact s"),
    ("fast_s", "fast s"), ("speedup", "exact/fast"), ("exact_mb", "exact MiB"), ("fast_mb", "fast MiB"),
    ("lam_err_layer_spread", "Δλ / layer spread"), ("lam_relerr_candidates", "Δλ / abs(λ), λ<0"),
    ("cos_min_layer_gap5", "min abs(cos), gap>5% layer"), ("cos_min_gap5", "min abs(cos), gap>5% neuron"),
    ("iterations", "iters max/mean"), ("matvecs", "S·v per neuron"), ("converged", "converged"),
]
MODEL_COLUMNS = [
    ("model", "model"), ("method", "method"), ("layers", "layers"), ("neurons", "neurons"),
    ("exact_layers", "exact layers"), ("max_d", "max d"), ("samples", "N"), ("phase_s", "phase s"),
    ("epoch_s", "epoch s (50k)"), ("ratio_to_epoch", "phase/epoch"), ("peak_mb", "peak MiB"),
    ("max_iterations", "max iters"), ("converged", "converged"),
]
TUNER_COLUMNS = [("decision", "decision"), ("neurons", "neurons"), ("picked", "picked"), ("seconds", "seconds")]


def _number(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    if math.isnan(value):
        return "n/a"
    if (value == int(value) and abs(value) < 1e6) or abs(value) >= 1000:
        return str(int(round(value)))
    return f"{value:.3g}"


def _cell(row: dict, key: str) -> str:
    if key == "layer":
        return f"{row['channels']}→{row['filters']}, {row['grid']}"
    if key == "iterations":
        return f"{row['iterations']}/{_number(row['mean_iterations'])}"
    if key == "exact_neurons":
        return row[key].replace(" (extrapolated)", "*")
    return _number(row.get(key, ""))


def table(rows, columns) -> str:
    head = [title for _, title in columns]
    lines = ["| " + " | ".join(t if t else "layer" for t in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    for path in (argv or sys.argv[1:]):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for section, columns in (("layers", LAYER_COLUMNS), ("models", MODEL_COLUMNS), ("tuner", TUNER_COLUMNS)):
            chosen = [r for r in rows if r.get("section") == section]
            if chosen:
                print(f"\n{path}: {section}\n")
                print(table(chosen, columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
