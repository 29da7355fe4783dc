"""The README's commands and API example stay true."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme():
    return (ROOT / "README.md").read_text()


def test_readme_holds_the_api_example_verbatim():
    example = (ROOT / "docs" / "api_example.py").read_text()
    code = example.split('"""', 2)[2].strip()
    blocks = re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)
    assert any(block.strip() == code for block in blocks), "README's API example differs from docs/api_example.py"


def test_api_example_runs():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "api_example.py")], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "plan:" in result.stdout and "->" in result.stdout


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", _readme(), flags=re.S)[0].strip().splitlines()
    test_command = [c for c in commands if "pytest" in c][0].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()
