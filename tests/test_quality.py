"""The quality gates run with the suite: ruff over the tree, mypy --strict over the runtime."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_ruff() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "server", "client_sdk", "tests", "functions", "schema.py", "bench"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run promises to run exactly the README's test command."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    (command,) = [line for line in ci if line.startswith(".venv/bin/pip install")]
    assert f"\n    {command}\n" in (ROOT / "README.md").read_text()
