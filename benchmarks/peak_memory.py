"""Peak memory of compute_splitting per method and layer size, beside what nni_splitting.core.memory predicts.

Each case runs in a fresh process (one torch thread): a warm-up call loads code and the BLAS buffers,
``VmHWM`` is reset, then one layer is split and the growth of the peak resident set over the state
before the call is recorded with the working memory the budget allots (``LayerCost``) and the time.

    python benchmarks/peak_memory.py --out benchmarks/peak_memory_cpu.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from nni_splitting.core.peak import measuring_environment

MIB = 1024 ** 2

# (kind, input size, neurons): Linear layers read d_in features, convs C_in channels of 16x16 (3x3 kernels)
CASES = [("linear", 256, 64), ("linear", 1024, 64), ("linear", 2048, 64), ("linear", 16384, 512),
         ("conv", 16, 32), ("conv", 64, 32), ("conv", 256, 32)]
LIMITS = [256 * MIB, 2048 * MIB]

CHILD = r"""
import json, sys, time, torch, torch.nn as nn
torch.set_num_threads(1)
from nni_splitting import compute_splitting
from nni_splitting.core.peak import reset_peak, resident_bytes, warm_up
kind, size, neurons, method, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.manual_seed(0)
if kind == "linear":
    model = nn.Sequential(nn.Linear(size, neurons), nn.Tanh(), nn.Linear(neurons, 3)).eval()
    batches = [(torch.randn(32, size), torch.randint(0, 3, (32,)))]
else:
    model = nn.Sequential(nn.Conv2d(size, neurons, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(neurons, 3)).eval()
    batches = [(torch.randn(32, size, 16, 16), torch.randint(0, 3, (32,)))]
warm_up(method)
reset_peak()
before = resident_bytes()
started = time.perf_counter()
try:
    split = compute_splitting(model, nn.CrossEntropyLoss(), batches, method=method, layers=["0"], memory_limit=limit)["0"]
    error = ""
except ValueError as refused:
    split, error = None, str(refused)
seconds = time.perf_counter() - started
results = 0 if split is None else 2 * split.directions.numel() * split.directions.element_size()
print(json.dumps({"peak_growth": resident_bytes(peak=True) - before, "results": results, "seconds": seconds,
                  "error": error}))
"""


def measure(kind: str, size: int, neurons: int, method: str, limit: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(size), str(neurons), method, str(limit)],
                          capture_output=True, text=True, timeout=3600, env=measuring_environment())
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/peak_memory_cpu.csv")
    args = parser.parse_args()
    rows = []
    for kind, size, neurons in CASES:
        d = (size * 9 if kind == "conv" else size) + 1
        for method in ("exact", "fast"):
            for limit in LIMITS:
                if method == "exact" and d * d * 4 * neurons > 8 * 1024 ** 3:
                    continue  # hours of eigh: the budget check is what this case shows, see the test
                result = measure(kind, size, neurons, method, limit)
                working = result["peak_growth"] - result["results"]
                rows.append({"layer": f"{kind} {size}->{neurons}", "d": d, "neurons": neurons, "method": method,
                             "memory_limit_mib": limit // MIB,
                             "peak_growth_mib": round(result["peak_growth"] / MIB, 1),
                             "results_mib": round(result["results"] / MIB, 1),
                             "working_mib": round(working / MIB, 1),
                             "within_limit": "" if result["error"] else working <= limit,
                             "seconds": round(result["seconds"], 2),
                             "refused": result["error"][:120]})
                print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
