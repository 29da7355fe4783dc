"""Issue 13 item 7: NNI's ``remote`` training service for real, the worker being an SSH server on 127.0.0.1.

The test starts Debian's OpenSSH server (``sshd``) on a free port of 127.0.0.1 with a throw-away host
key and a throw-away client key in tmp_path, points ``experiments/remote_localhost.yml`` (shortened)
at it and grows two steps of the digits example through ``nnictl``.  The lineage (seed, step 1,
step 2; each child's parent is the previous trial; widths grow) is read back through NNI's REST API.

Two views of the shared storage, as with NFS on real workers: sshd (hence NNI's trial keeper and the
trials) runs in its own mount namespace, where the store is bind-mounted at the worker path
(classArgs ``storage_path``) and the tuner's path (``local_storage_path``) is hidden under an empty
tmpfs.  So the trials can only write through the worker view and the tuner can only read through
its own view: a wrong path mapping on either side fails the test.  Where ``unshare``/``mount`` are not
allowed the worker view is a symlink to the store (both paths then work on both sides, weaker).

One experiment runs per module (fixture ``remote_run``); the tests check what was seen while it ran:
sshd's and NNI's trial keeper's listening addresses, the lineage, and whether the tuner, in the
environment NNI 3.0 gives its dispatcher (no NNI_EXP_ID: the id comes from NNI_CHECKPOINT_DIRECTORY),
finds a remote trial's finished work as a resume needs (it failed before that fix, docs/remote.md).

Skipped, with the reason, without an sshd binary (``apt-get install -y openssh-server``), without
root (sshd must switch to the logged-in user) or without nnictl.  The experiment (by its id) and
sshd are stopped in every case, and processes left under tmp_path are killed by pid.  About 40 s on
2 CPU cores.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import nni_helpers as ex
from nni_splitting.nni.lineage import grown_widths
from nni_splitting.nni.nnictl import LOOPBACK_PRELOAD

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "remote_localhost.yml"
SSHD = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
SSH_KEYGEN = shutil.which("ssh-keygen")
SSH = shutil.which("ssh")
ENV_ID = "remote-worker1"  # NNI 3.0's name of the first machine of machineList


def _skip_reason():
    if not sys.platform.startswith("linux"):
        return "reads /proc to check listening addresses (Linux only)"
    if not SSHD:
        return "no sshd binary (Debian: apt-get install -y openssh-server)"
    if not SSH_KEYGEN or not SSH:
        return "no ssh / ssh-keygen (Debian: apt-get install -y openssh-client)"
    if os.geteuid() != 0:
        return f"sshd must run as root to log a user in (euid {os.geteuid()})"
    command = ex.nnictl_command()
    if len(command) == 1 and not Path(command[0]).exists():
        return "no nnictl"
    if len(command) > 1:  # fallback `python -m nni.tools.nnictl.nnictl`
        import importlib.util
        if importlib.util.find_spec("nni") is None:
            return "no nnictl (nni is not installed)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


# ----------------------------------------------------------------------------------- listening sockets

def _socket_inodes(pid: int) -> set:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _hex_address(text: str, family: str) -> str:
    raw = bytes.fromhex(text)
    if family == "tcp":
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc/net/tcp6: four 32-bit words, each in host (little-endian) order
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening(pid: int) -> list:
    """``[(address, port)]`` of the TCP sockets in state LISTEN that process ``pid`` holds (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    found = []
    for family in ("tcp", "tcp6"):
        table = Path(f"/proc/net/{family}")
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = TCP_LISTEN
                address, port = local.split(":")
                found.append((_hex_address(address, family), int(port, 16)))
    return sorted(found)


def _outside_address():
    """An address of this machine other than loopback (the one of the default route), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # UDP connect: picks a route, sends nothing
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _refused(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        return sock.connect_ex((address, port)) != 0


# ----------------------------------------------------------------------------------------- the worker

def _keygen(path: Path) -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "nni-splitting-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path


def _namespace_works() -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "-o",
                            "size=64k", "tmpfs", "/mnt"], capture_output=True, timeout=30)
    return probe.returncode == 0


@contextlib.contextmanager
def ssh_worker(folder: Path, store: Path, worker_view: Path, session_env=None):
    """An sshd on a free port of 127.0.0.1 only; yields ``dict(port, key, pid, home, isolated)``.

    Only the throw-away client key may log in, as root, from 127.0.0.1.  The sessions get
    ``HOME=<folder>/home`` (NNI's trial keeper writes ``~/nni-experiments`` there), offline pip
    (NNI runs ``pip install nni --upgrade`` on every worker: no network look-up) and the loopback
    preload for NNI's node trial keeper (it serves its trials on a random port, on every interface
    otherwise).  ``session_env`` overrides these variables (a value of None drops one).
    """
    folder.mkdir(parents=True)
    home = folder / "home"
    env = {"HOME": str(home), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "NODE_OPTIONS": f"--require={LOOPBACK_PRELOAD}", "NNI_SPLITTING_BIND": "127.0.0.1", "OMP_NUM_THREADS": "1",
           **(session_env or {})}
    home.mkdir()
    host_key, client_key = _keygen(folder / "host_key"), _keygen(folder / "client_key")
    authorized = folder / "authorized_keys"
    authorized.write_text('from="127.0.0.1",no-port-forwarding,no-agent-forwarding,no-X11-forwarding '
                          + (folder / "client_key.pub").read_text())
    known_hosts = folder / "known_hosts"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder (Debian's)
    isolated = _namespace_works()
    if not isolated:
        worker_view.symlink_to(store, target_is_directory=True)
    proc, log = None, folder / "sshd.log"
    try:
        for attempt in range(5):
            port = ex.free_port(start=30000 + (os.getpid() * 7 + attempt * 97) % 30000)
            config = folder / "sshd_config"
            config.write_text("\n".join([
                f"ListenAddress 127.0.0.1:{port}",
                "AddressFamily inet",
                f"HostKey {host_key}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "AllowUsers root",
                "StrictModes no",                  # the key files live under /tmp (world-writable parents)
                "UsePAM no",
                "AllowTcpForwarding no",
                "X11Forwarding no",
                "PermitTunnel no",
                "Subsystem sftp internal-sftp",    # NNI uploads the trial code and its configs by SFTP
                "SetEnv " + " ".join(f'{k}="{v}"' for k, v in env.items() if v is not None),
                "LogLevel VERBOSE",
                "",
            ]))
            subprocess.run([SSHD, "-t", "-f", str(config)], check=True, capture_output=True, timeout=30)
            command = [SSHD, "-D", "-e", "-f", str(config)]
            if isolated:  # worker view = bind mount of the store; the tuner's path hidden under a tmpfs
                worker_view.mkdir(exist_ok=True)
                script = (f'mount --bind "{store}" "{worker_view}" && mount -t tmpfs -o size=64k tmpfs "{store}" '
                          f'&& exec "$@"')
                command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]
            with open(log, "ab") as handle:
                proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.time() + 20
            while time.time() < deadline and proc.poll() is None:
                if f"Server listening on 127.0.0.1 port {port}" in log.read_text(errors="replace"):
                    break
                time.sleep(0.1)
            if proc.poll() is None:
                break
            proc = None
        assert proc is not None, f"sshd did not start:\n{log.read_text(errors='replace')[-3000:]}"
        pub = (folder / "host_key.pub").read_text().split()
        known_hosts.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        yield dict(port=port, key=client_key, pid=proc.pid, home=home, isolated=isolated, log=log,
                   known_hosts=known_hosts)
    finally:
        if proc is not None:
            proc.terminate()  # sshd -D: the listener and its sessions end
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _ssh(worker, command: str) -> subprocess.CompletedProcess:
    return subprocess.run([SSH, "-i", str(worker["key"]), "-p", str(worker["port"]), "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={worker['known_hosts']}",
                           "-o", "IdentitiesOnly=yes", "root@127.0.0.1", command],
                          capture_output=True, text=True, timeout=60)


def _kill_leftovers(marker: str) -> list:
    """SIGKILL processes (by pid) whose command line names this test's folder; returns what was killed."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(cmdline[:200])
            except OSError:
                pass
    return killed


def _config(tmp_path: Path, worker: dict, store: Path, worker_view: Path) -> Path:
    config = ex.load_config(CONFIG)
    config["experimentWorkingDirectory"] = str(tmp_path / "nni")
    config["maxExperimentDuration"] = "8m"
    args = config["tuner"]["classArgs"]
    args.update(max_steps=2, storage_path=str(worker_view), local_storage_path=str(store))
    args["trial"].update(epochs=2, split_batches=4, num_threads=1)
    (machine,) = config["trainingService"]["machineList"]
    machine.update(host="127.0.0.1", port=worker["port"], user="root", sshKeyFile=str(worker["key"]),
                   pythonPath=str(Path(sys.executable).parent))
    return ex.write_config(config, tmp_path / "remote-short.yml")


def _trial_keeper_pid(home: Path, experiment_id: str, timeout: float = 90):
    pid_file = home / "nni-experiments" / experiment_id / "environments" / ENV_ID / "trial_keeper" / "trial_keeper.pid"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            pid = int(pid_file.read_text().split()[0])
            if listening(pid):
                return pid
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.2)
    return None


def _dispatcher_env(checkpoint_dir: Path, timeout: float = 60) -> dict:
    """The ``NNI_*`` environment of the experiment's dispatcher (the tuner's process), found by its checkpoint dir."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                items = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            env = dict(item.split("=", 1) for item in items if "=" in item)
            if env.get("NNI_CHECKPOINT_DIRECTORY") == str(checkpoint_dir) and "NNI_TUNER_COMMAND_CHANNEL" in env:
                return {k: v for k, v in env.items() if k.startswith("NNI")}
        time.sleep(0.5)
    return {}


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory):
    """One real experiment on the remote training service; what the tests below check, gathered while it ran."""
    tmp_path = tmp_path_factory.mktemp("remote")
    started = time.time()
    store, worker_view = tmp_path / "store", tmp_path / "worker-view"
    store.mkdir()
    run = dict(tmp_path=tmp_path, store=store, worker_view=worker_view)
    try:
        with ssh_worker(tmp_path / "sshd", store, worker_view) as worker:
            run.update(worker=worker, sshd_listening=listening(worker["pid"]), outside=_outside_address())
            run["outside_refused"] = run["outside"] is None or _refused(run["outside"], worker["port"])
            run["probe"] = _ssh(worker, f'echo "$HOME"; test -d "{worker_view}" && echo worker-view-ok')

            path = _config(tmp_path, worker, store, worker_view)
            run["class_args"] = ex.load_config(path)["tuner"]["classArgs"]
            port = ex.free_port(start=worker["port"] + 2)
            experiment_id = run["experiment_id"] = ex.create(path, port, env=ex.venv_env())
            try:  # stopped before sshd: NNI shuts the worker's trial keeper down through its channel
                base = ex.rest_url(port)
                keeper = _trial_keeper_pid(worker["home"], experiment_id)
                run["keeper_listening"] = listening(keeper) if keeper else None
                run["dispatcher_env"] = _dispatcher_env(tmp_path / "nni" / experiment_id / "checkpoint")
                run["final"] = ex.wait(base, timeout=240)
                run["trials"] = ex.read_trials(base)
                run["worker_experiments"] = os.listdir(worker["home"] / "nni-experiments")
                if run["final"] != "DONE":
                    run["diagnosis"] = _diagnose(tmp_path, experiment_id, worker)
            finally:
                ex.stop(experiment_id)
    finally:
        run["leftovers"] = _kill_leftovers(str(tmp_path) + os.sep)
    run["seconds"] = time.time() - started
    return run


def test_sshd_listens_on_127_0_0_1_only(remote_run):
    worker = remote_run["worker"]
    assert remote_run["sshd_listening"] == [("127.0.0.1", worker["port"])]  # its only listening socket
    assert remote_run["outside_refused"], f"sshd answers on {remote_run['outside']}"
    probe = remote_run["probe"]  # our own client, checking the throw-away host key
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(worker["home"]), "worker-view-ok"]


def test_remote_training_service_grows_two_steps_over_ssh(remote_run):
    trials = remote_run["trials"]
    assert remote_run["final"] == "DONE", (remote_run["final"], [(t["id"], t["status"]) for t in trials],
                                           remote_run.get("diagnosis"))
    _check_lineage(trials, remote_run["experiment_id"], remote_run["store"], remote_run["worker_view"],
                   remote_run["worker"]["isolated"])
    assert remote_run["experiment_id"] in remote_run["worker_experiments"]  # the worker's own bookkeeping
    leftovers = remote_run["leftovers"]
    assert not leftovers, f"processes outlived the experiment and sshd (killed): {leftovers}"
    assert remote_run["seconds"] < 240


def test_trial_keeper_serves_its_trials_on_loopback_only(remote_run):
    """NNI's trial keeper listens on every interface (``::``) unless the SSH session has the loopback preload."""
    assert remote_run["keeper_listening"], "no trial keeper seen on the worker"
    assert {address for address, _ in remote_run["keeper_listening"]} == {"127.0.0.1"}


def test_tuner_in_dispatcher_env_finds_remote_trials_finished_work(remote_run, monkeypatch):
    """What ``nnictl resume`` relies on: the tuner, in its dispatcher's environment, verifies finished work."""
    from nni_splitting.nni.tuner import SplittingTuner

    env = remote_run["dispatcher_env"]
    if not env.get("NNI_CHECKPOINT_DIRECTORY") or remote_run["final"] != "DONE":  # not the expected failure
        raise RuntimeError(f"no finished run to check (status {remote_run['final']}, dispatcher env {env})")
    for key in [k for k in os.environ if k.startswith("NNI")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key != "NNI_TUNER_COMMAND_CHANNEL":  # the experiment is stopped: no REST calls
            monkeypatch.setenv(key, value)
    tuner = SplittingTuner(**remote_run["class_args"])
    tuner.end_hook = None
    last = remote_run["trials"][-1]
    found = tuner._verify(types.SimpleNamespace(node_id=last["parameters"]["node_id"]), last["id"])
    assert found is not None and found["checkpoint"] == last["result"]["checkpoint"]


def _check_lineage(trials, experiment_id, store: Path, worker_view: Path, isolated: bool):
    done = [t for t in trials if t["status"] == "SUCCEEDED"]
    assert len(done) == 3 == len(trials), [(t["id"], t["status"]) for t in trials]
    assert [t["result"]["step"] for t in done] == [0, 1, 2]
    previous = None
    for trial in done:
        result, params = trial["result"], trial["parameters"]
        # Trials wrote under storage_path as *they* see it, into <storage_path>/<experiment>/<trial>/ ...
        own = worker_view / experiment_id / trial["id"]
        assert {result[k] for k in ("checkpoint", "splits", "indexes")} == {
            str(own / "checkpoint.pt"), str(own / "splits.pt"), str(own / "splitting.json")}
        # ... which the tuner's machine reads through local_storage_path.
        info = json.loads((store / experiment_id / trial["id"] / "splitting.json").read_text())
        assert info["step"] == result["step"] and info["node_id"] == params["node_id"] == result["node"]
        if isolated:  # the worker path does not exist on the tuner's side: the tuner used its mapping
            assert not Path(result["indexes"]).exists()
        if previous is None:
            assert result["parent"] == "" and params["step"] == 0
        else:
            assert result["parent"] == previous["id"] == params["parent"]
            # the child got its parent's files as the worker sees them
            assert params["parent_checkpoint"] == previous["result"]["checkpoint"]
            parent_info = json.loads((store / experiment_id / previous["id"] / "splitting.json").read_text())
            assert info["parent_node"] == parent_info["node_id"] and params["split_plan"]
            assert info["widths"] == grown_widths(parent_info["widths"], parent_info["width_layers"],
                                                  params["split_plan"])
            assert all(w >= p for w, p in zip(info["widths"], parent_info["widths"]))
            assert sum(info["widths"]) > sum(parent_info["widths"])
            assert result["params"] > previous["result"]["params"]
        previous = trial


def _diagnose(tmp_path: Path, experiment_id: str, worker: dict) -> str:
    """The tails of the manager's log, the worker's trial keeper log and sshd's log."""
    parts = []
    for path in [tmp_path / "nni" / experiment_id / "log" / "nnimanager.log",
                 *sorted((worker["home"] / "nni-experiments").glob("*/environments/*/trial_keeper/trial_keeper.log")),
                 *sorted((worker["home"] / "nni-experiments").glob("*/environments/*/trials/*/trial.log")),
                 worker["log"]]:
        try:
            parts.append(f"--- {path}\n" + path.read_text(errors="replace")[-2500:])
        except OSError:
            parts.append(f"--- {path}: missing")
    return "\n".join(parts)
