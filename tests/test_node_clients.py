"""The official npm `convex` package's clients, run by Node against a real `ripple dev`:
ConvexHttpClient (tests/js/http_client.test.mjs), the websocket ConvexClient
(tests/js/live_client.test.mjs) and its optimistic updates (tests/js/mutation_order.test.mjs),
each a `node --test` script. Their dependencies are pinned in tests/js/package-lock.json;
install them once with `npm ci --prefix tests/js`.
"""

from __future__ import annotations

import pytest

from conftest import run_node_tests

pytestmark = [pytest.mark.node, pytest.mark.e2e]


@pytest.mark.parametrize("script", ["http_client.test.mjs", "live_client.test.mjs", "mutation_order.test.mjs"])
def test_official_npm_client_against_ripple_dev(start_server, script: str) -> None:
    run_node_tests(script, start_server("dev"), timeout=120)
