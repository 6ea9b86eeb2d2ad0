"""Authentication (issue 12) as the official npm `convex` clients see it: tests/js/auth.test.mjs
(`node --test`) against `ripple serve` for tests/apps/auth and the test OIDC issuer
(tests/oidc_issuer.py), which mints the tokens the script fetches."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import AUTH_APP, ServerProcess, run_node_tests, unreachable_url
from oidc_issuer import OidcIssuer

pytestmark = [pytest.mark.node, pytest.mark.e2e]


def test_official_npm_clients_authenticate(start_server: Callable[..., ServerProcess], oidc_issuer: OidcIssuer) -> None:
    env = {**oidc_issuer.app_env(unreachable_url()), "RIPPLE_ADMIN_KEY": "k-npm-auth", "RIPPLE_AUTH_CLOCK_SKEW_SECONDS": "0"}
    server = start_server("serve", app_dir=AUTH_APP, extra_env=env)
    run_node_tests("auth.test.mjs", server, timeout=240, env={"ISSUER_URL": oidc_issuer.url, "ADMIN_KEY": "k-npm-auth"})


def test_ripple_js_sdk_authenticates(start_server: Callable[..., ServerProcess], oidc_issuer: OidcIssuer) -> None:
    """Ripple's own JS SDK (client_sdk/js) with tokens of a real provider: sign-in, refresh, expiry."""
    env = {**oidc_issuer.app_env(unreachable_url()), "RIPPLE_AUTH_CLOCK_SKEW_SECONDS": "0"}
    server = start_server("serve", app_dir=AUTH_APP, extra_env=env)
    run_node_tests("sdk_auth.test.mjs", server, timeout=120, env={"ISSUER_URL": oidc_issuer.url})
