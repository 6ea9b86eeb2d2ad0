"""Convex compatibility (issue 10) as the official npm `convex` clients see Ripple:
ConvexHttpClient and the websocket ConvexClient, in tests/js/compat.test.mjs (`node --test`),
against `ripple dev` serving tests/apps/compat. Install the npm package once with
`npm ci --prefix tests/js`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "js" / "compat.test.mjs"

pytestmark = [pytest.mark.node, pytest.mark.e2e]


def test_official_npm_clients(compat_server: ServerProcess) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed (`node` is not on PATH)")
    if not (ROOT / "tests" / "js" / "node_modules" / "convex").is_dir():
        pytest.fail("run `npm ci --prefix tests/js` to install the npm `convex` package")
    env = {**os.environ, "RIPPLE_URL": compat_server.url, "NO_COLOR": "1"}
    result = subprocess.run([node, "--test", str(SCRIPT.relative_to(ROOT))], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "# fail 0" in result.stdout, (
        f"node --test exited with {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n"
        f"--- stderr ---\n{result.stderr[-3000:]}\n--- server log ---\n{compat_server.log()[-3000:]}"
    )
