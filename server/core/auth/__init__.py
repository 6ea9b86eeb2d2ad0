"""Authentication: who a client's token says it is.

    providers.py  the providers `functions/auth_config.py` lists, checked when the app loads
    keys.py       their public keys: OIDC discovery, JWKS fetched and cached, inline JWKS
    claims.py     a verified token's claims as the Identity functions see (Convex's names)
    verify.py     Verifier: a token -> an Identity, or AuthFailed saying why

Nothing here imports a web framework; the transports (server/api) call `Runtime.authenticate`.
"""
