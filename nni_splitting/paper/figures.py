"""PNG figures of the paper reproductions (matplotlib, Agg backend; nothing is drawn at import)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["plot_rbf_figure", "plot_prototype_tree", "plot_index_vs_decrease", "plot_kws"]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
_COLORS = {"splitting": "C3", "random_split": "C0", "new_neuron": "C2", "boosting": "C1", "scratch": "C7"}
_LABELS = {"splitting": "splitting (ours)", "random_split": "random split", "new_neuron": "new initialization",
           "boosting": "gradient boosting", "scratch": "scratch (final size)"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    logger.info("wrote %s", path)
    return path


def _fit_line(ax, x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares line through the points; returns the Pearson correlation."""
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    grid = np.linspace(x.min(), x.max(), 10)
    ax.plot(grid, slope * grid + intercept, "k--", lw=1)
    return float(np.corrcoef(x, y)[0, 1])


def plot_rbf_figure(result: dict, path: PathLike) -> Path:
    """Fig. 1 (a)-(d) from :func:`nni_splitting.paper.rbf_toy.run_rbf_experiment`, one PNG with four panels."""
    import torch

    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    x, y = result["x"][:, 0].numpy(), result["y"][:, 0].numpy()
    ax = axes[0]
    ax.plot(x, y, "k", lw=2.5, label="true")
    models = result["runs"]["splitting"][0].models
    for k in sorted({0, 1, 3, len(models) - 1}):
        with torch.no_grad():
            fitted = models[k](result["x"])[:, 0].numpy()
        ax.plot(x, fitted, lw=1.2 if k < len(models) - 1 else 2, ls="-" if k == len(models) - 1 else ":",
                label=f"splitting, m={models[k].rbf.out_features}")
    ax.set(title="(a) true vs learned function", xlabel="x", ylabel="f(x)")
    ax.legend(fontsize=8)

    ax = axes[1]
    probe = result["index_vs_decrease"]
    ax.scatter(probe["index"], probe["decrease"], color="C3", zorder=3, label="measured")
    ax.plot(probe["index"], probe["predicted"], "x", color="k", label=r"$-\epsilon^2\lambda_{min}/2$")
    r = _fit_line(ax, probe["index"], probe["decrease"])
    m = result["config"]["probe_neurons"]
    ax.set(title=f"(b) splitting index vs loss decrease (m={m}, r={r:.3f})", xlabel=r"splitting index $\lambda_{min}$",
           ylabel="loss decrease")
    ax.legend(fontsize=8)

    ax = axes[2]
    sweep = result["angle"]
    ax.plot(sweep["angle"], sweep["decrease"], "o-", color="C3", label="measured")
    ax.plot(sweep["angle"], sweep["predicted"], "k--", lw=1, label="second-order theory")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set(title=r"(c) loss decrease vs angle to $v_{min}$", xlabel="angle (degrees)", ylabel="loss decrease")
    ax.legend(fontsize=8)

    ax = axes[3]
    for method, runs in result["runs"].items():
        curves = np.array([run.losses for run in runs])
        median = np.median(curves, axis=0)
        steps = np.arange(1, curves.shape[1] + 1)
        ax.plot(steps, median, color=_COLORS.get(method), label=_LABELS.get(method, method))
        if len(runs) > 1:
            ax.fill_between(steps, curves.min(0), curves.max(0), color=_COLORS.get(method), alpha=0.12, lw=0)
    ax.set_yscale("log")
    seeds = len(result["config"]["seeds"])
    ax.set(title=f"(d) training loss (median{' and range' if seeds > 1 else ''} of {seeds} seed(s))",
           xlabel="iteration (L-BFGS)", ylabel="training loss")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_prototype_tree(images: Dict[int, np.ndarray], parents: Dict[int, Optional[int]], generations: Dict[int, int],
                        path: PathLike, labels: Optional[Dict[int, str]] = None) -> Path:
    """Evolutionary tree of prototypes: each node the decoded 28x28 prototype, edges parent -> offspring.

    Parameters
    ----------
    images : dict
        ``{node id: [28, 28] array}``.
    parents : dict
        ``{node id: parent id or None (root)}``.
    generations : dict
        ``{node id: split step at which the node was born}`` (the row of the node in the drawing).
    labels : dict, optional
        Text under each node (e.g. the splitting index).
    """
    plt = _pyplot()
    children: Dict[Optional[int], List[int]] = {}
    for node, parent in parents.items():
        children.setdefault(parent, []).append(node)
    leaves: List[int] = []

    def order(node: int) -> None:  # leaves left to right, depth first
        kids = sorted(children.get(node, []))
        if not kids:
            leaves.append(node)
        for kid in kids:
            order(kid)

    roots = sorted(children.get(None, []))
    for root in roots:
        order(root)
    xpos: Dict[int, float] = {leaf: float(i) for i, leaf in enumerate(leaves)}

    def place(node: int) -> float:
        if node not in xpos:
            xpos[node] = float(np.mean([place(kid) for kid in children[node]]))
        return xpos[node]

    for root in roots:
        place(root)
    depth = max(generations.values()) + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(leaves)), max(3.0, 1.25 * depth)))
    for node, parent in parents.items():
        if parent is not None:
            ax.plot([xpos[parent], xpos[node]], [-generations[parent], -generations[node]], color="0.6", lw=1, zorder=1)
    for node, image in images.items():
        cx, cy = xpos[node], -generations[node]
        ax.imshow(image, cmap="gray", extent=(cx - 0.4, cx + 0.4, cy - 0.4, cy + 0.4), zorder=2)
        if labels and node in labels:
            ax.text(cx, cy - 0.47, labels[node], ha="center", va="top", fontsize=6)
    ax.set_xlim(-0.6, len(leaves) - 0.4)
    ax.set_ylim(-depth + 0.3, 0.6)
    ax.set_yticks([-g for g in range(depth)], [f"step {g}" for g in range(depth)])
    ax.set_xticks([])
    ax.set_title("Evolutionary tree of prototypes (decoded); parent -> two offspring")
    return _save(fig, path)


def plot_index_vs_decrease(index: Sequence[float], decrease: Sequence[float], path: PathLike, title: str,
                           second: Optional[Sequence[float]] = None, second_label: str = "",
                           first_label: str = "loss decrease") -> Path:
    """Scatter of splitting index vs loss decrease, with a least-squares line and the correlation in the title."""
    plt = _pyplot()
    index, decrease = np.asarray(index, float), np.asarray(decrease, float)
    panels = 1 if second is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.2), squeeze=False)
    for ax, values, label in zip(axes[0], [decrease, np.asarray(second, float) if second is not None else None],
                                 [first_label, second_label]):
        ax.scatter(index, values, color="C3", zorder=3)
        for i, (a, b) in enumerate(zip(index, values)):
            ax.annotate(str(i), (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
        r = _fit_line(ax, index, values)
        ax.set(xlabel=r"splitting index $\lambda_{min}$", ylabel=label)
        ax.set_title(f"{label}\n(Pearson r with the index: {r:.3f})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_kws(rows: Sequence[dict], path: PathLike) -> Path:
    """Test accuracy vs parameters and vs operations per keyword-spotting arm.

    Rows with the same ``arm`` and ``step`` (e.g. the seeds of one arm) are averaged; the error bar is
    their accuracy's standard deviation.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["arm"], row.get("step", 0)), []).append(row)
    arms = sorted({arm for arm, _ in groups})
    for i, arm in enumerate(arms):
        points = sorted((np.mean([r["params"] for r in g]), np.mean([r["flops"] for r in g]),
                         100 * np.mean([r["test_acc"] for r in g]), 100 * np.std([r["test_acc"] for r in g]))
                        for (a, _), g in groups.items() if a == arm)
        params, flops, acc, std = (np.array(v) for v in zip(*points))
        for ax, x in ((axes[0], params / 1e3), (axes[1], flops / 1e6)):
            ax.errorbar(x, acc, yerr=std, fmt="o-", color=f"C{i}", capsize=3, label=arm)
    axes[0].set(xlabel="parameters (K)", ylabel="test accuracy (%)", title="accuracy vs #params")
    axes[1].set(xlabel="operations (M multiply-adds)", ylabel="test accuracy (%)", title="accuracy vs #ops")
    for ax in axes:
        ax.legend(fontsize=8)
    return _save(fig, path)
