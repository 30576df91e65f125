"""The layout rules of pyproject.toml's import-linter contracts hold, and a broken rule fails the check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` with the project's contracts on the ``tools`` package found in ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    cmd = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
           str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(cmd, cwd=package_parent, env=env, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def _lint_with_import(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """Lint a copy of ``tools`` whose file ``module`` (path below tools/) has ``line`` appended."""
    copy = tmp_path / "tools"
    shutil.copytree(ROOT / "tools", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    return _lint(tmp_path)


def test_a_shared_module_importing_a_paper_package_breaks_the_contract(tmp_path):
    result = _lint_with_import(tmp_path, "metrics/roi_image_quality.py",
                               "from tools.aortadiff.clinical_metrics import area_mm2")
    assert result.returncode != 0
    assert "tools.metrics.roi_image_quality -> tools.aortadiff.clinical_metrics" in result.stdout
    assert "shared folders never import a paper package" in result.stdout


def test_paper_packages_importing_each_other_break_the_contract(tmp_path):
    result = _lint_with_import(tmp_path, "cardiac/dice_table.py", "from tools.abdomen import labels")
    assert result.returncode != 0
    assert "paper packages are independent of each other BROKEN" in result.stdout
