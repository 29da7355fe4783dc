"""Issue 26: the package's layers are folders, and the house rules hold for every module.

* the import-linter layers contract in ``pyproject.toml`` (paper > nni > baselines > growth > core >
  graph > models > common) is kept;
* no module is longer than 450 lines and no class longer than 250;
* outside ``graph/`` no code asks whether a module is a Linear / Conv / BatchNorm (layer kinds go
  through the handler registry).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nni_splitting"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250
LAYER_CLASSES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d")


def _lint_imports() -> str:
    found = Path(sys.executable).with_name("lint-imports")
    return str(found) if found.exists() else (shutil.which("lint-imports") or "")


def test_the_layers_contract_is_kept():
    command = _lint_imports()
    if not command:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]'")
    proc = subprocess.run([command, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_contract_names_every_folder_of_the_package():
    import tomllib
    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    folders = {f"nni_splitting.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(layers), (sorted(folders), layers)
    stray = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not stray, f"modules outside the layer folders: {stray}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, f"class {node.name}"


@pytest.mark.parametrize("path", [p for p in MODULES if "graph" not in p.relative_to(PACKAGE).parts],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layer_kinds_are_asked_of_the_handler_registry(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            named = [getattr(k, "attr", getattr(k, "id", "")) for k in kinds]
            assert not set(named) & set(LAYER_CLASSES), f"{path.name}:{node.lineno} asks isinstance({named})"
