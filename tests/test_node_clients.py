"""The official npm `convex` package's clients, run by Node against a real `ripple dev`:
ConvexHttpClient (tests/js/http_client.test.mjs) and the websocket ConvexClient
(tests/js/live_client.test.mjs; with optimistic updates, tests/js/mutation_order.test.mjs), each a
`node --test` script. Their dependencies are pinned in
tests/js/package-lock.json; install them once with `npm ci --prefix tests/js`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js"
NODE_TIMEOUT = 120

pytestmark = [pytest.mark.node, pytest.mark.e2e]


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


@pytest.mark.parametrize("script", ["http_client.test.mjs", "live_client.test.mjs", "mutation_order.test.mjs"])
def test_official_npm_client_against_ripple_dev(start_server, script: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed (`node` is not on PATH); this test needs Node 18+")
    if not (JS_DIR / "node_modules" / "convex" / "package.json").is_file():
        pytest.fail(
            "tests/js/node_modules is missing (or lacks `convex`): "
            "run `npm ci --prefix tests/js` to install the npm `convex` package"
        )

    server = start_server("dev")
    env = {**os.environ, "RIPPLE_URL": server.url, "NO_COLOR": "1"}
    try:
        result = subprocess.run(
            [node, "--test", str((JS_DIR / script).relative_to(ROOT))],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"node did not finish within {NODE_TIMEOUT} s\n"
            f"--- node stdout ---\n{_text(exc.stdout)}\n--- node stderr ---\n{_text(exc.stderr)}\n"
            f"--- server log ---\n{server.log()}"
        )

    if result.returncode != 0:
        print("--- node stdout ---", result.stdout, sep="\n")
        print("--- node stderr ---", result.stderr, sep="\n")
        print("--- server log ---", server.log(), sep="\n")
    assert result.returncode == 0, (
        f"node --test exited with {result.returncode}; see node's output and the server log above\n"
        f"{result.stdout[-4000:]}"
    )
