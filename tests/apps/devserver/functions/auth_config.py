"""The development issuer as an ordinary OIDC provider, as the example app lists it. `ripple dev`
sets RIPPLE_DEV_AUTH_ISSUER before loading; under `ripple serve` there is none, so no provider."""

import os

issuer = os.environ.get("RIPPLE_DEV_AUTH_ISSUER")
providers = [{"domain": issuer, "application_id": "convex"}] if issuer else []
