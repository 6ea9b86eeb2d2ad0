// The user auth token's life: fetch it, have the server confirm it, fetch a fresh one before it
// expires, and fetch a forced fresh one when the server refuses it — the way the official
// convex-js client behaves (its AuthenticationManager), in a smaller state machine.
//
// `fetchToken({forceRefreshToken})` returns a JWT or null. The first call may return a cached
// token (forceRefreshToken: false); every later one asks for a fresh token. The server confirms a
// token with a Transition that moves the identity version; it refuses one with AuthError (and
// closes the socket). A refused token gets one forced refetch: a new token is tried, the same
// token or null gives up, as does a second refusal of a fresh token: the client then runs
// without auth and `onChange(false)` fires. `onChange(true)` fires when a token is first confirmed.
//
// The manager talks to the client through `host`: `hold()` (requests wait: nothing may run with
// the wrong identity while a token is fetched; holds are counted, each one released once),
// `release()`, `use(token or null)` (send it, or keep it for the next socket).

const MAX_REFRESH_DELAY_MS = 20 * 24 * 3600 * 1000; // setTimeout's range is 2**31 ms

/** The JWT's payload claims, decoded without verifying (the server verifies); null if not a JWT. */
export function decodeJwtClaims(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Milliseconds until a confirmed, freshly fetched token should be replaced: `leewaySeconds`
 * before it expires (its lifetime `exp - iat` counted from now, which does not depend on the
 * two clocks agreeing; `exp` against the local clock when there is no `iat`); null when it has
 * no `exp`. */
export function refreshDelayMs(claims, leewaySeconds, nowMs = Date.now()) {
  if (claims === null || typeof claims.exp !== "number") return null;
  const lifetime = typeof claims.iat === "number" ? claims.exp - claims.iat : claims.exp - nowMs / 1000;
  return Math.min(MAX_REFRESH_DELAY_MS, Math.max(0, (lifetime - leewaySeconds) * 1000));
}

export class AuthManager {
  constructor(host, { leewaySeconds = 10, logger = console } = {}) {
    this.host = host;
    this.leewaySeconds = leewaySeconds;
    this.logger = logger;
    this.config = null; // {fetchToken, onChange}
    this.generation = 0; // bumped by setConfig/clear: an older fetch's answer is dropped
    this.token = null; // the token sent, not yet refused
    this.waiting = false; // a token was sent and its confirmation is awaited
    this.confirmed = false; // onChange(true) has fired for this config
    this.retried = false; // the current token is already the forced refetch after a refusal
    this.timer = null;
  }

  async setConfig(fetchToken, onChange = () => {}) {
    this.clear();
    const generation = this.generation;
    this.config = { fetchToken, onChange };
    this.host.hold();
    try {
      const token = await this.fetch(false, generation);
      if (token === undefined) return; // replaced meanwhile
      this.send(token, false);
    } finally {
      this.host.release();
    }
  }

  clear() {
    this.generation++;
    clearTimeout(this.timer);
    this.timer = null;
    this.config = null;
    this.token = null;
    this.waiting = false;
    this.confirmed = false;
    this.retried = false;
  }

  /** The server confirmed the identity last sent. */
  onConfirmed() {
    if (!this.waiting || this.config === null) return;
    this.waiting = false;
    this.retried = false;
    if (!this.confirmed) {
      this.confirmed = true;
      this.config.onChange(true);
    }
    const delay = refreshDelayMs(decodeJwtClaims(this.token), this.leewaySeconds);
    if (delay !== null) {
      const generation = this.generation;
      this.timer = setTimeout(() => void this.refresh(generation), delay);
    }
  }

  /** The server refused the token (it closes the socket; the client reconnects after `release`). */
  async onRefused(error) {
    if (this.config === null) return;
    clearTimeout(this.timer);
    if (this.retried || this.token === null) {
      this.giveUp(`the server refused the auth token: ${error}`);
      return;
    }
    const generation = this.generation;
    this.host.hold();
    try {
      const token = await this.fetch(true, generation);
      if (token === undefined) return;
      if (token === null || token === this.token) {
        this.giveUp(`the server refused the auth token and no other could be fetched: ${error}`);
        return;
      }
      this.send(token, true);
    } finally {
      this.host.release();
    }
  }

  /** Replace the token before it expires (scheduled by `onConfirmed`). */
  async refresh(generation) {
    const token = await this.fetch(true, generation);
    if (token === undefined || token === this.token) return;
    if (token === null) {
      this.giveUp("fetchToken returned no token when refreshing it");
      return;
    }
    this.send(token, false);
  }

  send(token, retried) {
    if (token === null) {
      this.giveUp(null);
      return;
    }
    this.token = token;
    this.waiting = true;
    this.retried = retried;
    this.host.use(token);
  }

  giveUp(reason) {
    const { onChange } = this.config;
    if (reason !== null) this.logger.error(`RippleClient: ${reason}`);
    this.clear();
    this.host.use(null);
    onChange(false);
  }

  /** fetchToken's answer (a string or null), or undefined when the config changed meanwhile. */
  async fetch(forceRefreshToken, generation) {
    if (generation !== this.generation) return undefined;
    let token;
    try {
      token = await this.config.fetchToken({ forceRefreshToken });
    } catch (error) {
      this.logger.error("RippleClient: fetchToken failed:", error);
      token = null;
    }
    if (generation !== this.generation) return undefined;
    return typeof token === "string" && token !== "" ? token : null;
  }
}
