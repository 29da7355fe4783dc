"""Where the time of one fast splitting phase goes (torch.profiler), for one model.

Usage: ``python benchmarks/profile_phase.py --model vgg19_bn --device cuda --samples 1024``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_splitting import batches_of, load_images, train_briefly  # noqa: E402
from nni_splitting import compute_splitting  # noqa: E402
from nni_splitting.models import build_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg19_bn")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--method", default="fast")
    parser.add_argument("--data", default=None)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    x, y, _ = load_images(args.data)
    torch.manual_seed(0)
    model = build_model(args.model).to(device)
    train_briefly(model, x[:3000], y[:3000], 20, device, batch_size=128)
    batches = batches_of(x, y, args.samples, 128, len(x) - args.samples)

    def phase():
        start = time.perf_counter()
        splits = compute_splitting(model, nn.CrossEntropyLoss(), batches, method=args.method)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, splits

    print("warm-up phase: %.2f s" % phase()[0])
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profiler:
        seconds, splits = phase()
    print("profiled phase: %.2f s; solver seconds per layer: %s" % (
        seconds, ", ".join("%.2f" % s.convergence["seconds"] for s in splits.values() if s.convergence)))
    averages = profiler.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if device.type == "cuda":
        print(averages.table(sort_by="self_device_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
