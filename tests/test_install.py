"""``pip install .`` (non-editable) into a fresh venv, then ``nni-splitting run`` outside the checkout (issue 10).

The package (pyproject.toml, README.md, nni_splitting/) is copied to a temporary folder, built and
installed with pip into a new venv, ``--no-deps`` and without network: the dependencies (torch, nni,
...) come from this environment's site-packages through a ``.pth`` line, which adds the folder
but runs none of its ``.pth`` hooks, so the checkout's editable install stays invisible (checked:
``nni_splitting.__file__`` lies inside the new venv).  Then ``nni-splitting run`` (the console
script) on a copy of ``experiments/digits.yml`` in an empty folder, its ``trialCodeDirectory`` line
removed and the tuner's ``codeDirectory`` set to ``.``: tuner and trials import the installed
package.  About 2 minutes on 2 CPU cores (slow-ish: the build, then seed + 2 growth steps).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _copy_package(to: Path) -> Path:
    to.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, to / name)
    shutil.copytree(ROOT / "nni_splitting", to / "nni_splitting", ignore=shutil.ignore_patterns("__pycache__"))
    return to


def test_installed_package_runs_digits_outside_the_checkout(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, nni, ... only
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean["PATH"] = os.pathsep.join([str(env_dir / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    # the venv's own (bundled, older) setuptools would shadow this environment's, which builds wheels itself
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], env=clean, check=True,
                   capture_output=True, timeout=120)
    source = _copy_package(tmp_path / "src")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--ignore-installed", str(source)], env=clean, capture_output=True,
                         text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    shutil.rmtree(source)  # nothing may refer to the sources
    where = subprocess.check_output([str(python), "-c", "import nni_splitting; print(nni_splitting.__file__)"],
                                    env=clean, text=True, cwd=tmp_path).strip()
    assert Path(where).is_relative_to(env_dir), where
    assert (Path(where).parent / "search_spaces" / "small_cnn.json").is_file()  # package data shipped
    assert (Path(where).parent / "nni" / "loopback.js").is_file()

    user = tmp_path / "user"
    user.mkdir()
    text = (ROOT / "experiments" / "digits.yml").read_text()
    text = re.sub(r"^trialCodeDirectory:.*\n", "", text, flags=re.M)
    text = re.sub(r"^(\s+)codeDirectory:.*$", r"\1codeDirectory: .", text, flags=re.M)
    text = text.replace("max_steps: 4 ", "max_steps: 2 ").replace("epochs: 6", "epochs: 3")
    text += f"experimentWorkingDirectory: {tmp_path / 'nni'}\n"
    (user / "digits.yml").write_text(text)
    assert "trialCodeDirectory" not in text and "codeDirectory: ." in text and "max_steps: 2 " in text
    proc = subprocess.run([str(env_dir / "bin" / "nni-splitting"), "run", "--config", "digits.yml", "--timeout",
                           "400"], cwd=user, env=clean, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert re.search(r"lineage\s+step\s+trial", output) and "best by validation accuracy" in output
    assert len(re.findall(r"SUCCEEDED", proc.stdout)) == 3  # seed + 2 steps
    dispatcher = next(p for p in (tmp_path / "nni").glob("*/log/dispatcher.log") if "_latest" not in p.parts)
    assert str(ROOT) not in dispatcher.read_text()
