"""Ripple's JS SDK (client_sdk/js/, docs/js-sdk.md), run by Node in tests/js/sdk.test.mjs
(`node --test`) against a real `ripple serve` of tests/apps/jssdk. The restart test starts and
kills servers of its own on the same database and schema, with the command given here."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable

import pytest

from conftest import APPS, ServerProcess, run_node_tests

pytestmark = [pytest.mark.node, pytest.mark.e2e]

JSSDK_APP = APPS / "jssdk"


def test_js_sdk(start_server: Callable[..., ServerProcess], pg_url: str, namespace: str) -> None:
    admin_key = secrets.token_hex(16)
    server_env = {"RIPPLE_ADMIN_KEY": admin_key}
    server = start_server("serve", app_dir=JSSDK_APP, extra_env=server_env)
    argv = [sys.executable, "-m", "server.cli", "serve", "--dir", str(JSSDK_APP)]
    run_node_tests("sdk.test.mjs", server, timeout=120, env={
        **server_env, "RIPPLE_SERVER_ARGV": json.dumps(argv), "DATABASE_URL": pg_url, "RIPPLE_DB_SCHEMA": namespace,
    })
