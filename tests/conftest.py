"""Suite-wide settings: one intra-op thread.

On a small shared machine torch's default thread pool spins against other processes and makes small
convolutions ~100x slower; the tests use tiny models, so one thread is the fast choice.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

#: The development machines' data (shared/data): tests that need CIFAR-10 skip where it is absent.
CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory):
    """A real CIFAR-10 ImageFolder export with 20 training and test images per class (once per run)."""
    exporter = CIFAR10 / "export_imagefolder.py"
    if not exporter.exists():
        pytest.skip(f"no CIFAR-10 at {CIFAR10}")
    dest = tmp_path_factory.mktemp("cifar_small") / "cifar10"
    subprocess.run([sys.executable, str(exporter), str(dest), "--per-class", "20"], check=True, capture_output=True)
    return dest
