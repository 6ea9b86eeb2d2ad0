"""Who may sign in to the example app (docs/auth.md, docs/example-app.md#signing-in).

- `CLERK_ISSUER_URL` set in the server's environment (your Clerk instance's issuer, e.g.
  `https://verb-noun-12.clerk.accounts.dev`, with a JWT template named `convex`): Clerk.
- Otherwise `RIPPLE_DEV_AUTH_ISSUER`, which `ripple dev` sets to its own offline issuer
  (`/_ripple/dev-auth`), so the app can be tried without an account anywhere.
- Neither (`ripple serve` without Clerk configured): no providers, and every token is refused
  with a message saying no provider has its issuer.

Both are read from the server process's environment, not from `ripple env`: providers are fixed
when the app loads.
"""

import os

if os.environ.get("CLERK_ISSUER_URL"):
    providers = [{"domain": os.environ["CLERK_ISSUER_URL"], "application_id": "convex"}]
elif os.environ.get("RIPPLE_DEV_AUTH_ISSUER"):
    providers = [{"domain": os.environ["RIPPLE_DEV_AUTH_ISSUER"], "application_id": "convex"}]
else:
    providers = []
