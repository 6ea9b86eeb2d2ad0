"""The auth tests' providers: the test issuer (tests/oidc_issuer.py) as an OIDC provider and as
a custom-JWT one, two custom-JWT providers with inline keys, and an issuer nobody listens on."""

import base64
import json
import os

issuer = os.environ["RIPPLE_TEST_ISSUER"]
data_uri_jwks = base64.b64encode(os.environ["RIPPLE_TEST_DATA_URI_JWKS"].encode()).decode()

providers = [
    {"domain": issuer, "application_id": "convex"},
    {"type": "customJwt", "issuer": issuer + "/custom", "jwks": issuer + "/custom/jwks", "algorithm": "ES256",
     "application_id": "custom-app"},
    {"type": "customJwt", "issuer": "https://inline.example", "jwks": json.loads(os.environ["RIPPLE_TEST_INLINE_JWKS"]),
     "algorithm": "RS256"},
    {"type": "customJwt", "issuer": "https://datauri.example/", "jwks": "data:application/json;base64," + data_uri_jwks,
     "algorithm": "ES256"},
    {"domain": os.environ["RIPPLE_TEST_UNREACHABLE"], "application_id": "convex"},
]
