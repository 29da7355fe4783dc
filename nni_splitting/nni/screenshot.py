"""Screenshot NNI's web dashboard (trial table) of an experiment in headless Chromium.

    python -m nni_splitting.nni.screenshot --port 8080 --out docs/figures/dashboard_compare.png
    python -m nni_splitting.nni.screenshot --experiment ID --out docs/figures/dashboard_compare.png

With ``--experiment`` (and no ``--port``) the experiment is served by ``nnictl view ID --port P``
for the time of the screenshot and stopped again.  Needs Debian's ``chromium``
(``apt-get install -y chromium``).  The page is NNI's ``/detail`` (trials detail); ``--page oview``
takes the overview instead.

NNI's trial table shows only id / duration / status / default metric until a user picks more columns
("Add/Remove columns"), which the web UI keeps in the browser's ``localStorage`` under
``<experiment id>_columns``.  So that the screenshot shows the arms side by side, the script drives
headless Chromium through its DevTools protocol (``--remote-debugging-port``, Python ``websockets``):
it opens the page, stores that column choice (``arm``, ``method``, ``seed``, ``step``, ``params``,
``params_ratio``, ``flops``, ``epochs``, ``wall_time`` result columns), reloads, and captures the page.
``--plain`` uses chromium's ``--screenshot`` flag instead (default columns only).
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nni_splitting.nni.nnictl as nnictl
import nni_splitting.nni.rest as rest

__all__ = ["screenshot", "screenshot_with_columns", "COLUMNS", "main"]

logger = logging.getLogger(__name__)


def screenshot(url: str, out: Path, width: int = 1600, height: int = 1000, budget_ms: int = 15000) -> Path:
    """Capture ``url`` with chromium's ``--screenshot`` flag (NNI's default trial-table columns)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise RuntimeError("no chromium found: apt-get install -y chromium")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:  # chromium may still write
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
               f"--virtual-time-budget={budget_ms}", "--hide-scrollbars", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot ({proc.returncode}): {proc.stderr[-2000:]}")
    return out


COLUMNS = ["sequenceId", "id", "latestAccuracy", "metric/arm", "metric/method", "metric/seed",
           "metric/step", "metric/params", "metric/params_ratio", "metric/epochs", "metric/wall_time"]


def screenshot_with_columns(url: str, experiment_id: str, out: Path, width: int = 1600, height: int = 1400,
                            columns=COLUMNS, wait_s: float = 12.0) -> Path:
    """Open ``url`` in headless Chromium, choose the trial table's columns (localStorage), reload, capture."""
    import urllib.request

    from websockets.sync.client import connect  # deferred: an optional dependency, only for this call

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise RuntimeError("no chromium found: apt-get install -y chromium")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    debug_port = nnictl.free_port(9300)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:  # chromium may still write
        proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                 "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                 "--hide-scrollbars", f"--remote-debugging-port={debug_port}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            pages = None
            for _ in range(60):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json", timeout=2) as answer:
                        pages = [p for p in json.loads(answer.read()) if p.get("type") == "page"]
                    if pages:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            if not pages:
                raise RuntimeError("chromium's DevTools endpoint did not answer")
            with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as ws:
                counter = [0]

                def call(method, **params):
                    counter[0] += 1
                    ws.send(json.dumps({"id": counter[0], "method": method, "params": params}))
                    while True:
                        message = json.loads(ws.recv(timeout=60))
                        if message.get("id") == counter[0]:
                            if "error" in message:
                                raise RuntimeError(f"{method}: {message['error']}")
                            return message.get("result", {})

                call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
                call("Page.navigate", url=url)
                time.sleep(wait_s / 2)
                value = json.dumps({"value": json.dumps(list(columns)), "time": int(time.time() * 1000),
                                    "expire": 30 * 24 * 3600 * 1000, "isSelectall": False})
                call("Runtime.evaluate", expression=f"localStorage.setItem({json.dumps(experiment_id + '_columns')}, "
                                                    f"{json.dumps(value)})")
                call("Page.reload")
                time.sleep(wait_s)
                data = call("Page.captureScreenshot", format="png")["data"]
            out.write_bytes(base64.b64decode(data))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return out


def main(argv=None) -> int:
    """``python -m nni_splitting.nni.screenshot --port P | --experiment ID [--out PNG]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="port of a running (or viewed) experiment")
    parser.add_argument("--experiment", help="experiment id to serve with `nnictl view` when no --port")
    parser.add_argument("--workdir", help="its experimentWorkingDirectory, if not the default")
    parser.add_argument("--page", default="detail", help="dashboard page: detail (trial table) or oview")
    parser.add_argument("--out", default="docs/figures/dashboard_compare.png")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--plain", action="store_true", help="chromium --screenshot, NNI's default columns")
    args = parser.parse_args(argv)
    viewed = None
    port = args.port
    if port is None:
        if not args.experiment:
            parser.error("give --port or --experiment")
        port = nnictl.free_port(8700)
        cmd = ["view", args.experiment, "--port", str(port)]
        if args.workdir:
            cmd += ["--experiment_dir", args.workdir]
        nnictl.run_nnictl(cmd)
        viewed = args.experiment
        time.sleep(3)
    try:
        url = f"http://{nnictl.LOOPBACK}:{port}/{args.page}"
        if args.plain:
            path = screenshot(url, Path(args.out), args.width, args.height)
        else:
            experiment_id = args.experiment or rest.rest(rest.rest_url(port), "experiment")["id"]
            path = screenshot_with_columns(url, experiment_id, Path(args.out), args.width, args.height)
        print(f"saved {path}")
    finally:
        if viewed:
            nnictl.stop(viewed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
