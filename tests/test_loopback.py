"""NNI's dashboard/REST server on loopback only unless ``--public`` (issue 13, item 4), with real nnictl.

Each test starts a real experiment (experiments/digits.yml, shortened) through
:func:`nni_splitting.nni.nnictl.start`, reads the kernel's table of listening sockets
(``/proc/net/tcp`` and ``/proc/net/tcp6``) for NNI's port, and stops the experiment by id.
About 15 s each on 2 CPU cores.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nni_splitting.nni import nnictl, rest
from nni_splitting.nni.config import load_config, write_config

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "experiments" / "digits.yml"
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def _listening(port: int):
    """The addresses (as in /proc/net/tcp*: hex) listening on ``port``, e.g. {'0100007F'} for 127.0.0.1."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == LISTEN:
                    found.add(address)
    return found


def _outside_address():
    """An address of this machine that is not loopback, or None (then the reachability check is skipped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for a UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _start(tmp_path, public: bool):
    config = load_config(DIGITS)
    config.update(experimentWorkingDirectory=str(tmp_path / "nni"), maxTrialNumber=1, maxExperimentDuration="5m")
    config["tuner"]["classArgs"].update(max_steps=0)
    config["tuner"]["classArgs"]["trial"].update(epochs=1)
    port = nnictl.free_port(start=24000 + os.getpid() % 20000)
    return nnictl.start(config, "digits.yml", port, public=public)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_nni_listens_on_loopback_only_by_default(tmp_path):
    experiment_id, port = _start(tmp_path, public=False)
    try:
        assert rest.status(rest.rest_url(port))["status"]  # answers on 127.0.0.1 (and the tuner connected)
        addresses = _listening(port)
        assert addresses == {"0100007F"}, addresses  # 127.0.0.1 only: not 0.0.0.0, not ::
        outside = _outside_address()
        if outside:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                assert sock.connect_ex((outside, port)) != 0  # refused from the machine's other address
    finally:
        assert nnictl.stop(experiment_id)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_public_opt_in_warns_and_listens_on_every_interface(tmp_path):
    config = load_config(DIGITS)
    config.update(experimentWorkingDirectory=str(tmp_path / "nni"), maxTrialNumber=1, maxExperimentDuration="5m")
    config["tuner"]["classArgs"].update(max_steps=0)
    path = write_config(config, tmp_path / "digits.yml")
    port = nnictl.free_port(start=26000 + os.getpid() % 20000)
    proc = subprocess.run([sys.executable, "-m", "nni_splitting", "run", "--config", str(path), "--port", str(port),
                           "--public", "--keep", "--timeout", "1"], capture_output=True, text=True, timeout=300)
    match = re.search(r"experiment (\w+) started", proc.stdout)
    try:
        assert match, proc.stdout + proc.stderr
        assert "WARNING: --public" in proc.stderr and "every network interface" in proc.stderr
        addresses = _listening(port)
        assert addresses & {"00000000", "00000000000000000000000000000000"}, addresses  # 0.0.0.0 or ::
    finally:
        if match:
            assert nnictl.stop(match.group(1))


def test_preload_is_in_the_environment_unless_public():
    env = nnictl.venv_env({"PATH": "/usr/bin", "NODE_OPTIONS": "--max-http-header-size=9000"})
    assert f"--require={nnictl.LOOPBACK_PRELOAD}" in env["NODE_OPTIONS"].split()
    assert "--max-http-header-size=9000" in env["NODE_OPTIONS"] and env["NNI_SPLITTING_BIND"] == "127.0.0.1"
    assert nnictl.LOOPBACK_PRELOAD.is_file()
    public = nnictl.venv_env(env, public=True)
    assert public["NODE_OPTIONS"] == "--max-http-header-size=9000" and "NNI_SPLITTING_BIND" not in public
