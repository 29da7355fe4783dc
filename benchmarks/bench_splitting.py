"""Exact vs fast splitting, the cost of a splitting phase, and the tuner's decision time.

One run measures, side by side, and prints a table per section (and writes one CSV):

1. ``layers``: for a 3x3 conv with ``d`` = 27 ... 4608 parameters per neuron (3 ... 512 input
   channels, 32 ... 256 filters, CIFAR-10 images at the resolution such a layer has in VGG), inside a
   small network briefly trained on real CIFAR-10: wall time and peak memory of ``method="exact"``
   and ``method="fast"``, their ratio, the error of ``lambda_min`` and ``|cos|`` between directions.
   Where the exact method would take too long (``--exact-budget-s``) it runs on a subset of the
   neurons (the same code path, on the same recorded data) and its time and memory are extrapolated
   linearly in the number of neurons; the ``exact_neurons`` column says so.
2. ``models``: one full splitting phase (every splittable layer, ``fast`` and ``auto``) of MobileNetV1
   and VGG19-BN on CIFAR-sized input, relative to one training epoch of the same model on 50,000
   images (the epoch is timed on ``--epoch-batches`` batches and scaled).
3. ``tuner``: the time the tuner needs to decide the next child from a trial's splitting indexes.

Usage (from the repository root)::

    nice python benchmarks/bench_splitting.py --csv benchmarks/results_cpu.csv
    python benchmarks/bench_splitting.py --device cuda --samples 1024 --csv results_cuda.csv

Not part of the test suite. Data: the pixel-exact CIFAR-10 images of ``shared/data/cifar10``
(``--data``), or Gaussian images if that file is missing (printed).
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import platform
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nni_splitting import compute_splitting, select_neurons  # noqa: E402
from nni_splitting.core import splitting as _splitting  # noqa: E402  (the exact path's per-chunk function)
from nni_splitting.growth.energy import select_energy_aware  # noqa: E402
from nni_splitting.graph import activation_of_node, find_neuron_groups, trace_model  # noqa: E402
from nni_splitting.core.matrix import min_eigenpairs  # noqa: E402
from nni_splitting.models import build_model, default_widths, scale_widths  # noqa: E402

logger = logging.getLogger("bench_splitting")

#: (input channels, filters, grid): the 3x3 convs of the layer section; d = 9 * channels.
LAYER_CONFIGS = [(3, 32, 32), (16, 32, 32), (64, 64, 16), (128, 128, 16), (256, 256, 8), (512, 256, 4)]
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "shared" / "data" / "cifar10" / "cifar10_train_lossless_first4000.npz"
FALLBACK_DATA = Path("/work/shared/data/cifar10/cifar10_train_lossless_first4000.npz")
CIFAR_TRAIN_SIZE = 50_000


# ---------------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory above the level at entry: CUDA's allocator statistics, or the process RSS sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            import psutil
            self.process = psutil.Process()
            self.base = self.process.memory_info().rss
            self.high = self.base
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.high = max(self.high, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.high, self.process.memory_info().rss) - self.base
        return False


@contextmanager
def timed(device: torch.device, out: dict, key: str):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out[key] = time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- data and models


def load_images(path: Optional[str], count: int = 4000):
    """CIFAR-10 images ``[count, 3, 32, 32]`` (standardized) and labels; Gaussian data if the file is missing."""
    for candidate in [Path(path)] if path else [DEFAULT_DATA, FALLBACK_DATA]:
        if candidate.is_file():
            z = np.load(candidate)
            x = torch.tensor(z["x"][:count]).permute(0, 3, 1, 2).float() / 255.0
            x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
            return x, torch.tensor(z["y"][:count]).long(), str(candidate)
    generator = torch.Generator().manual_seed(0)
    print("CIFAR-10 file not found: using Gaussian images (timings are still valid, spectra are not)")
    return torch.randn(count, 3, 32, 32, generator=generator), torch.randint(0, 10, (count,), generator=generator), "gaussian"


def layer_model(channels: int, filters: int, grid: int) -> nn.Sequential:
    """A network whose module ``"target"`` is a 3x3 conv ``channels -> filters`` at ``grid x grid``."""
    stem: List[nn.Module] = []
    if channels != 3:
        stem = [nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
    if grid < 32:
        stem.append(nn.MaxPool2d(32 // grid))
    layers = stem + [nn.Conv2d(channels, filters, 3, padding=1), nn.BatchNorm2d(filters), nn.ReLU(),
                     nn.Conv2d(filters, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def train_briefly(model: nn.Module, x, y, steps: int, device, batch_size: int = 64) -> float:
    """A few SGD steps so activations and gradients look like those of a network in training."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss = torch.zeros(())
    for step in range(steps):
        start = (step * batch_size) % (len(x) - batch_size)
        inputs, targets = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def batches_of(x, y, samples: int, batch_size: int, offset: int):
    return [(x[offset + i:offset + min(samples, i + batch_size)], y[offset + i:offset + min(samples, i + batch_size)])
            for i in range(0, samples, batch_size)]


# ---------------------------------------------------------------------------------------------- section 1


def exact_subset(model: nn.Module, name: str, batches, neurons: slice, device) -> Dict[str, object]:
    """The exact method on the neurons ``neurons`` of layer ``name``: S (same code as compute_splitting), eigh."""
    parameter = next(model.parameters())
    graph_module = trace_model(model, batches[0][0].to(device, parameter.dtype))
    groups, _ = find_neuron_groups(graph_module, [name])
    group = groups[name]
    nodes = {node.name: node for node in graph_module.graph.nodes}
    modules = dict(graph_module.named_modules())
    spec = activation_of_node(graph_module, nodes[group.activation_node])
    keep = {n for n in [group.input_node, group.preactivation_node, group.activation_node] if n}
    d = modules[name].weight[0].numel() + (1 if modules[name].bias is not None else 0)
    total = sum(int(t.shape[0]) for _, t in batches)
    out: Dict[str, object] = {}
    with PeakMemory(device) as memory, timed(device, out, "seconds"):
        s = torch.zeros(neurons.stop - neurons.start, d, d, dtype=parameter.dtype, device=device)
        recording = 0.0
        for index, (inputs, targets) in enumerate(batches):
            with timed(device, out, "batch"):
                values, gradients = _splitting._record_batch(graph_module, keep, [group.activation_node],
                                                             nn.CrossEntropyLoss(), inputs.to(device), targets.to(device), index)
            recording += out["batch"]
            s += int(targets.shape[0]) * _splitting._splitting_matrices(group, modules, values, gradients, spec, None, neurons)
        s /= total
        eigenvalues, directions = min_eigenpairs(s)
    out["memory"], out["recording"] = memory.peak, recording
    out["spectrum"] = torch.linalg.eigvalsh(0.5 * (s + s.transpose(1, 2)).double())
    out["norms"] = s.flatten(1).abs().amax(1).double().cpu()
    out["eigenvalues"], out["directions"] = eigenvalues, directions
    return out


def bench_layer(channels, filters, grid, x, y, args, device, dtype) -> dict:
    torch.manual_seed(0)
    model = layer_model(channels, filters, grid).to(device, dtype)
    loss = train_briefly(model, x[:3000].to(dtype), y[:3000], args.train_steps, device)
    name = str(len(model) - 9)  # the target conv
    d = channels * 9 + 1
    batches = batches_of(x.to(dtype), y, args.samples, args.batch_size, offset=len(x) - args.samples)
    loss_fn = nn.CrossEntropyLoss()
    row = {"d": d, "channels": channels, "filters": filters, "grid": f"{grid}x{grid}", "samples": args.samples,
           "train_loss": round(loss, 3)}
    fast_options = {"tol": args.tol, "block": args.block, "max_iter": args.max_iter}
    compute_splitting(model, loss_fn, batches[:1], method="fast", layers=[name], fast_options=fast_options)  # warm-up
    times: Dict[str, float] = {}
    with PeakMemory(device) as memory, timed(device, times, "fast"):
        fast = compute_splitting(model, loss_fn, batches, method="fast", layers=[name], fast_options=fast_options)[name]
    row.update(fast_s=times["fast"], fast_mb=memory.peak / 2 ** 20)
    # Exact: all neurons when it fits the time budget, else a subset, extrapolated linearly in neurons.
    probe = exact_subset(model, name, batches, slice(0, min(2, filters)), device)
    per_neuron = probe["seconds"] / min(2, filters)
    count = filters if args.exact_budget_s <= 0 else int(max(2, min(filters, args.exact_budget_s // max(per_neuron, 1e-9))))
    exact = probe if count <= 2 else exact_subset(model, name, batches, slice(0, count), device)
    count = min(count, filters)
    scale = filters / count
    s_bytes = d * d * torch.finfo(dtype).bits // 8  # one splitting matrix
    # Time: linear in neurons, plus the recording pass. Memory: the exact path keeps every S of a layer
    # (compute_splitting concatenates them before eigh), so the subset's S is replaced by all of them.
    row.update(exact_neurons=f"{count}/{filters}" + ("" if count == filters else " (extrapolated)"),
               exact_s=(exact["seconds"] - exact["recording"]) * scale + exact["recording"],
               exact_mb=(exact["memory"] + (filters - count) * s_bytes) / 2 ** 20, s_mb=filters * s_bytes / 2 ** 20)
    row["speedup"] = row["exact_s"] / row["fast_s"]
    # Accuracy on the neurons computed by both.
    spectrum = exact["spectrum"]
    lam = spectrum[:, 0]
    spread = spectrum[:, -1] - spectrum[:, 0]
    gap = spectrum[:, 1] - spectrum[:, 0] if spectrum.shape[1] > 1 else spread
    layer_spread = float(spectrum[:, -1].max() - spectrum[:, 0].min())
    mine = fast.eigenvalues[:count].double().cpu()
    error = (mine - lam.cpu()).abs()
    cos = (fast.directions[:count].double().cpu() * exact["directions"].double().cpu()).sum(1).abs()
    wide = (gap / spread.clamp_min(1e-300)).cpu() > 0.05  # gap > 5% of the neuron's own spread
    wide_layer = gap.cpu() > 0.05 * layer_spread  # gap > 5% of the layer's spread (as in tests/test_fast.py)
    candidates = lam.cpu() < -0.01 * layer_spread  # clearly negative: the neurons a selection would pick
    row.update(lam_err_layer_spread=float(error.max() / layer_spread),
               lam_err_neuron_spread=float((error / spread.cpu().clamp_min(1e-300)).max()),
               lam_relerr_candidates=float((error[candidates] / lam.cpu()[candidates].abs()).max()) if candidates.any() else float("nan"),
               candidates=int(candidates.sum()),
               cos_min_layer_gap5=float(cos[wide_layer].min()) if wide_layer.any() else float("nan"),
               layer_gap5=f"{int(wide_layer.sum())}/{count}",
               cos_min_gap5=float(cos[wide].min()) if wide.any() else float("nan"), gap5=f"{int(wide.sum())}/{count}",
               cos_median=float(cos.median()))
    if args.dump:
        Path(args.dump).mkdir(parents=True, exist_ok=True)
        torch.save({"spectrum_min2": spectrum[:, :2].cpu(), "spectrum_max": spectrum[:, -1].cpu(), "cos": cos,
                    "fast": mine, "norms": exact["norms"]}, Path(args.dump) / f"layer_d{d}.pt")
    report = fast.convergence
    row.update(iterations=report["iterations"], mean_iterations=round(report["mean_iterations"], 1),
               matvecs=round(report["matvecs"], 1), converged=f"{report['converged']}/{report['num']}")
    return row


# ---------------------------------------------------------------------------------------------- section 2


def bench_model(name: str, x, y, args, device, dtype) -> List[dict]:
    widths = scale_widths(name, args.width_scale) if args.width_scale != 1.0 else default_widths(name)
    torch.manual_seed(0)
    model = build_model(name, widths).to(device, dtype)
    loss = train_briefly(model, x[:3000].to(dtype), y[:3000], args.train_steps, device, batch_size=args.batch_size)
    # One training epoch: timed on a few batches, scaled to 50,000 images.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train = batches_of(x.to(dtype), y, args.batch_size * (args.epoch_batches + 1), args.batch_size, 0)
    times: Dict[str, float] = {}
    for index, (inputs, targets) in enumerate(train):
        if index == 1:
            start = time.perf_counter()
        inputs, targets = inputs.to(device), targets.to(device)
        loss_value = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_image = (time.perf_counter() - start) / (args.epoch_batches * args.batch_size)
    epoch = per_image * CIFAR_TRAIN_SIZE
    model.eval()
    batches = batches_of(x.to(dtype), y, args.samples, args.batch_size, offset=len(x) - args.samples)
    rows = []
    for method in ("fast", "auto"):
        with PeakMemory(device) as memory, timed(device, times, method):
            splits = compute_splitting(model, nn.CrossEntropyLoss(), batches, method=method,
                                       fast_options={"tol": args.tol, "block": args.block, "max_iter": args.max_iter})
        reports = [s.convergence for s in splits.values() if s.convergence]
        rows.append({"model": name, "widths": "x%g" % args.width_scale, "method": method, "layers": len(splits),
                     "neurons": sum(s.num_neurons for s in splits.values()),
                     "exact_layers": sum(s.method == "exact" for s in splits.values()),
                     "max_d": max(s.directions.shape[1] for s in splits.values()), "samples": args.samples,
                     "phase_s": times[method], "peak_mb": memory.peak / 2 ** 20, "epoch_s": epoch,
                     "ratio_to_epoch": times[method] / epoch,
                     "max_iterations": max((r["iterations"] for r in reports), default=0),
                     "converged": f"{sum(r['converged'] for r in reports)}/{sum(r['num'] for r in reports)}",
                     "train_loss": round(loss, 3)})
    return rows


# ---------------------------------------------------------------------------------------------- section 3


def bench_tuner(args) -> List[dict]:
    """Decision time on VGG19-BN-sized index sets (5,504 neurons, 16 layers): the tuner's own _select when
    it can be imported, and the selectors alone."""
    generator = np.random.default_rng(0)
    widths = default_widths("vgg19_bn")
    layers = [f"features.conv{i}.conv" for i in range(1, len(widths) + 1)]
    eigenvalues = {layer: (generator.standard_normal(w) - 0.5).tolist() for layer, w in zip(layers, widths)}
    model = build_model("vgg19_bn", widths)
    from nni_splitting.growth.counting import neuron_costs
    start = time.perf_counter()
    costs = neuron_costs(model, torch.zeros(1, 3, 32, 32), kind="flops")
    counting = time.perf_counter() - start
    total = sum(costs[layer] * w for layer, w in zip(layers, widths))
    rows = [{"decision": "neuron_costs (NNI counter, 16 layers, once per trial)", "neurons": sum(widths), "seconds": counting}]

    def timeit(label, fn, repeat=5):
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            plan = fn()
            best = min(best, time.perf_counter() - start)
        rows.append({"decision": label, "neurons": sum(widths), "seconds": best,
                     "picked": sum(len(v) for v in plan.values())})

    m = int(0.3 * sum(widths))
    timeit("select_neurons top-m (m = 30%)", lambda: select_neurons(eigenvalues, max_splits=m))
    timeit("select_neurons cost-aware + budget", lambda: select_neurons(eigenvalues, costs=costs, budget=0.3 * total))
    timeit("select_energy_aware LP (HiGHS), 1 budget", lambda: select_energy_aware(eigenvalues, costs, 0.3 * total))
    groups = {f"stage{i}": [l for l in layers if int(l.split("conv")[1].split(".")[0]) in r]
              for i, r in enumerate([range(1, 3), range(3, 5), range(5, 9), range(9, 13), range(13, 17)])}
    group_budget = {g: 0.3 * sum(costs[l] * widths[layers.index(l)] for l in ls) for g, ls in groups.items()}
    timeit("select_energy_aware LP (HiGHS), 5 stage budgets",
           lambda: select_energy_aware(eigenvalues, costs, group_budget, groups=groups))
    timeit("select_energy_aware greedy, 5 stage budgets",
           lambda: select_energy_aware(eigenvalues, costs, group_budget, groups=groups, solver="greedy"))
    try:
        from nni_splitting.nni.tuner import SplittingTuner
        tuner = SplittingTuner(model="vgg19_bn", seed_widths=1.0, grow_ratio=0.3, cost="flops")
        info = {"widths": widths, "width_layers": layers, "eigenvalues": eigenvalues, "costs": {"flops": costs}}
        timeit("SplittingTuner._select (cost=flops, grow_ratio=0.3)", lambda: tuner._select(info))
    except Exception as error:  # the tuner is developed concurrently
        rows.append({"decision": f"SplittingTuner unavailable ({type(error).__name__}: {error})", "neurons": 0,
                     "seconds": float("nan")})
    return rows


# ---------------------------------------------------------------------------------------------- main


def print_table(title: str, rows: List[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    def fmt(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else (f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}")
        return str(value)
    cells = [[fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--sections", default="layers,models,tuner")
    parser.add_argument("--d", default="", help="comma-separated subset of d (27,144,576,1152,2304,4608)")
    parser.add_argument("--samples", type=int, default=256, help="images the splitting matrices average over")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=60, help="SGD steps before splitting")
    parser.add_argument("--exact-budget-s", type=float, default=60.0,
                        help="seconds the exact method may take per layer before it runs on a subset (<= 0: all neurons)")
    parser.add_argument("--tol", type=float, default=None)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--max-iter", type=int, default=None)
    parser.add_argument("--models", default="mobilenet_v1,vgg19_bn")
    parser.add_argument("--width-scale", type=float, default=1.0, help="model widths = default widths x this")
    parser.add_argument("--epoch-batches", type=int, default=4, help="training batches timed for the epoch estimate")
    parser.add_argument("--data", default=None, help="the CIFAR-10 .npz with x [N,32,32,3] uint8 and y")
    parser.add_argument("--csv", default=None)
    parser.add_argument("--dump", default=None, help="folder for per-neuron spectra and |cos| of the layer section")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    from nni_splitting.core.fast import FAST_DEFAULTS
    args.tol = args.tol if args.tol is not None else FAST_DEFAULTS["tol"]
    args.block = args.block if args.block is not None else FAST_DEFAULTS["block"]
    args.max_iter = args.max_iter if args.max_iter is not None else FAST_DEFAULTS["max_iter"]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = getattr(torch, args.dtype)
    x, y, source = load_images(args.data)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    print(f"# bench_splitting: {time.strftime('%Y-%m-%d %H:%M')}, {machine}, torch {torch.__version__}, {args.dtype}, "
          f"data {source}, fast tol={args.tol} block={args.block} max_iter={args.max_iter}")
    sections = set(args.sections.split(","))
    all_rows: List[dict] = []

    def save(section: str, rows: List[dict]) -> None:
        all_rows.extend({"section": section, **r} for r in rows)
        if args.csv:  # rewritten after every row, so an interrupted run keeps what it measured
            keys = list(dict.fromkeys(k for row in all_rows for k in row))
            Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
            with open(args.csv, "w", newline="") as handle:
                writer = csv.DictWriter(handle, keys)
                writer.writeheader()
                writer.writerows(all_rows)

    if "layers" in sections:
        wanted = {int(v) for v in args.d.split(",") if v}
        rows = []
        for channels, filters, grid in LAYER_CONFIGS:
            if wanted and channels * 9 not in wanted:
                continue
            rows.append(bench_layer(channels, filters, grid, x, y, args, device, dtype))
            save("layers", rows[-1:])
            print_table("layers (so far)", rows[-1:])
            sys.stdout.flush()
        print_table("exact vs fast, one 3x3 conv layer", rows)
    if "models" in sections:
        rows = []
        for name in [m for m in args.models.split(",") if m]:
            rows += bench_model(name, x, y, args, device, dtype)
            save("models", rows[-2:])
            sys.stdout.flush()
        print_table("one splitting phase vs one training epoch (50,000 images)", rows)
    if "tuner" in sections:
        rows = bench_tuner(args)
        save("tuner", rows)
        print_table("tuner decision time (VGG19-BN, 5,504 neurons)", rows)
    if args.csv:
        print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
