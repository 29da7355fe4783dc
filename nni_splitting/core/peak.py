"""Measuring the peak memory of a splitting in this process (Linux ``/proc``), for tests and benchmarks.

:func:`reset_peak` then :func:`resident_bytes` ``(peak=True)`` give the peak resident set of what
ran in between; run it in a child process started with :func:`measuring_environment`, after
:func:`warm_up`, so that what is measured is the call's own working memory.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
import torch.nn as nn

from nni_splitting.core.splitting import compute_splitting

__all__ = ["resident_bytes", "reset_peak", "measuring_environment", "warm_up"]


def resident_bytes(peak: bool = False) -> int:
    """This process's resident set (``VmRSS``) or its peak since start or :func:`reset_peak` (``VmHWM``), Linux."""
    key = "VmHWM:" if peak else "VmRSS:"
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0), to measure the peak of what follows."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def measuring_environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for a child process whose peak resident set is measured: glibc serves every block
    of 64 KiB or more by ``mmap`` and returns it on free, so the resident set follows the live tensors
    (by default freed blocks below a moving threshold stay in the heap and hide later allocations)."""
    environment = dict(os.environ if base is None else base)
    environment.update({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"})
    return environment


def warm_up(method: str = "auto") -> None:
    """Load the code and buffers a first splitting pays once (BLAS buffers, LAPACK) before a peak is measured."""
    torch.randn(512, 512) @ torch.randn(512, 512)
    torch.linalg.eigh(torch.eye(128) + 0.01 * torch.randn(128, 128).triu())
    model = nn.Sequential(nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 3)).eval()
    compute_splitting(model, nn.CrossEntropyLoss(), [(torch.randn(8, 16), torch.randint(0, 3, (8,)))], method=method,
                      fast_options={"max_iter": 2})
