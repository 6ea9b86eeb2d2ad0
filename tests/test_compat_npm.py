"""Convex compatibility (issue 10) as the official npm `convex` clients see Ripple:
ConvexHttpClient and the websocket ConvexClient, in tests/js/compat.test.mjs (`node --test`),
against `ripple dev` serving tests/apps/compat. Install the npm package once with
`npm ci --prefix tests/js`."""

from __future__ import annotations

import pytest

from conftest import ServerProcess, run_node_tests

pytestmark = [pytest.mark.node, pytest.mark.e2e]


def test_official_npm_clients(compat_server: ServerProcess) -> None:
    run_node_tests("compat.test.mjs", compat_server, timeout=300)
