// RippleClient: a small, dependency-free client for Ripple's Convex sync protocol (/api/sync),
// for browsers (<script type="module">, no build step) and Node 20+. See docs/js-sdk.md.
//
//   import { RippleClient } from "./ripple.js";
//   const client = new RippleClient("http://127.0.0.1:3210");
//   const stop = client.onUpdate("messages:list", {}, (messages) => render(messages));
//   await client.mutation("messages:send", { body: "hi" }); // resolves once `render` saw it
//
// This file owns the socket, timers and callbacks; the protocol state is protocol.js (sans-I/O),
// the auth token's life auth.js, paginated queries pagination.js, values values.js.

import { AuthManager } from "./auth.js";
import { PaginatedQuery } from "./pagination.js";
import { ProtocolViolation, SyncProtocol, canonicalPath } from "./protocol.js";
import { convexToJson, jsonToConvex } from "./values.js";

export { convexToJson, jsonToConvex } from "./values.js";

/** An application error a function raised with ConvexError(data); `data` is decoded. */
export class ConvexError extends Error {
  constructor(message, data) {
    super(message);
    this.name = "ConvexError";
    this.data = data;
  }
}

/** Reconnect delays in ms: doubling from `initialMs` to `maxMs`, each with jitter (half fixed,
 * half random) so that clients cut off together do not all come back at the same moment. */
export function* backoff(initialMs = 250, maxMs = 10_000) {
  for (let attempt = 0; ; attempt++) {
    const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
    yield ceiling / 2 + Math.random() * (ceiling / 2);
  }
}

function syncUrl(url) {
  const match = /^(https?|wss?):\/\/([^/?#]+)\/*$/.exec(String(url));
  if (match === null) throw new TypeError(`RippleClient needs the deployment URL, such as http://127.0.0.1:3210, not ${JSON.stringify(url)}`);
  const scheme = { http: "ws", https: "wss", ws: "ws", wss: "wss" }[match[1]];
  return `${scheme}://${match[2]}/api/sync`;
}

function newSessionId() {
  const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context; this does not
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A function's path and arguments checked and encoded: a bad one would make the server close
 * the connection, and every reconnect would send it again. */
function callOf(path, args) {
  if (typeof path !== "string" || !/^[^:]+(:[^:]+)?$/.test(path)) {
    throw new TypeError(`a function path is "module:function" (or "dir/module:function"), not ${JSON.stringify(path)}`);
  }
  const value = args ?? {};
  if (typeof value !== "object" || Array.isArray(value) || ArrayBuffer.isView(value) || value instanceof ArrayBuffer) {
    throw new TypeError(`the arguments of ${path} must be an object of named arguments`);
  }
  return convexToJson(value, "args");
}

function errorOf(message, data, hasData) {
  return hasData ? new ConvexError(message, data) : new Error(message);
}

const LEVELS = { "[ERROR]": "error", "[WARN]": "warn", "[DEBUG]": "debug" };

export class RippleClient {
  /**
   * @param url the deployment, http(s)://host:port
   * @param options webSocketConstructor (default: the global WebSocket; pass `ws`'s on Node 20),
   *   reconnectDelay {initialMs, maxMs}, inactivityTimeoutMs (reconnect after that long without
   *   a server message; default 60 s), refreshTokenLeewaySeconds (default 10), logger (default
   *   console), showLogLines (print functions' log lines; default true)
   */
  constructor(url, options = {}) {
    this.url = syncUrl(url);
    this.WebSocket = options.webSocketConstructor ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("RippleClient: no WebSocket here (Node before 22): pass options.webSocketConstructor, e.g. the `ws` package's WebSocket");
    }
    const delay = options.reconnectDelay ?? {};
    this.delays = () => backoff(delay.initialMs, delay.maxMs);
    this.inactivityMs = options.inactivityTimeoutMs ?? 60_000;
    this.logger = options.logger ?? console;
    this.showLogLines = options.showLogLines ?? true;
    this.protocol = new SyncProtocol(newSessionId());
    this.auth = new AuthManager(
      {
        hold: () => this.protocol.hold(),
        release: () => this.released(),
        use: (token) => this.useToken(token),
      },
      { leewaySeconds: options.refreshTokenLeewaySeconds ?? 10, logger: this.logger },
    );
    this.listeners = new Map(); // queryId -> Set of listener(result)
    this.refs = new Map(); // queryId -> how many subscriptions (onUpdate, pages) hold it
    this.batchHooks = new Set(); // hook(changed query ids) after each Transition
    this.pending = new Map(); // requestId -> {resolve, reject, kind, path}
    this.connectionListeners = new Set();
    this.state = "connecting"; // "connected" | "reconnecting" | "closed"
    this.retries = 0; // sockets that failed since the last good one
    this.socket = null;
    this.handshakeDue = false; // the socket is open, waiting for auth before Connect
    this.closeReason = "InitialConnect";
    this.backoff = this.delays();
    this.reconnectTimer = null;
    this.inactivityTimer = null;
    this.lastReported = "";
    this.openSocket();
  }

  // -- public API ----------------------------------------------------------------------------

  /** Subscribe: `callback(value)` now (if known) and on every change; `onError(error)` when the
   * query fails (it keeps running and recovers when its data changes). Identical subscriptions
   * share one server query. Returns a function that unsubscribes. */
  onUpdate(path, args, callback, onError) {
    const queryId = this._addQuery(path, callOf(path, args));
    const deliver = (result) => {
      if (result.ok) {
        callback(result.value);
      } else if (onError) {
        onError(errorOf(result.errorMessage, result.errorData, result.hasErrorData));
      } else {
        this.logger.error(`RippleClient: query ${path} failed: ${result.errorMessage}`);
      }
    };
    let active = true;
    const listener = (result) => active && deliver(result);
    let set = this.listeners.get(queryId);
    if (set === undefined) this.listeners.set(queryId, (set = new Set()));
    set.add(listener);
    const current = this.protocol.results.get(queryId);
    if (current !== undefined) queueMicrotask(() => this.safely(() => listener(current))); // shared, already loaded
    return () => {
      if (!active) return;
      active = false;
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(queryId);
      this._removeQuery(queryId);
    };
  }

  /** The query's current result (subscribes until the first result arrives). */
  query(path, args) {
    return new Promise((resolve, reject) => {
      let unsubscribe = null;
      let done = false;
      const finish = (settle, value) => {
        if (done) return;
        done = true;
        settle(value);
        unsubscribe(); // set: onUpdate never calls back before it returns
      };
      unsubscribe = this.onUpdate(path, args, (v) => finish(resolve, v), (e) => finish(reject, e));
    });
  }

  /** Run a mutation. Resolves with its result once this client's subscriptions show its writes;
   * rejects with ConvexError (application errors) or Error. Made while disconnected it is sent on
   * reconnect, and it runs once however many times it is resent. */
  mutation(path, args) {
    return this.request("Mutation", path, args);
  }

  /** Run an action. An action in flight when the connection drops fails ("Connection lost while
   * action was in flight"): actions are never resent. */
  action(path, args) {
    return this.request("Action", path, args);
  }

  /** A live paginated query over a function that calls `paginate(paginationOpts)`. `callback`
   * gets {results, status, loadMore}; status is LoadingFirstPage | CanLoadMore | LoadingMore |
   * Exhausted. Returns a handle: results, status, loadMore(n), unsubscribe(). */
  onPaginatedUpdate(path, args, { initialNumItems }, callback, onError) {
    const wireArgs = callOf(path, args);
    if ("paginationOpts" in wireArgs) throw new TypeError("onPaginatedUpdate adds paginationOpts itself; leave it out of args");
    const fail = (result) => {
      const error = errorOf(result.errorMessage, result.errorData, result.hasErrorData);
      if (onError) onError(error);
      else this.logger.error(`RippleClient: paginated query ${path} failed: ${result.errorMessage}`);
    };
    const paginated = new PaginatedQuery(this, path, wireArgs, initialNumItems, callback, fail);
    return {
      get results() {
        return paginated.results;
      },
      get status() {
        return paginated.status;
      },
      loadMore: (numItems) => paginated.loadMore(numItems),
      unsubscribe: () => paginated.unsubscribe(),
    };
  }

  /** Authenticate as a user: `fetchToken({forceRefreshToken})` returns a JWT or null.
   * `onChange(true)` once the server accepts a token, `onChange(false)` when none is accepted.
   * Requests wait while the token is fetched. */
  setAuth(fetchToken, onChange) {
    return this.auth.setConfig(fetchToken, onChange);
  }

  /** Authenticate with the deployment's admin key (internal functions become callable). */
  setAdminAuth(adminKey) {
    this.auth.clear();
    this.sendNow(this.protocol.setAuth({ tokenType: "Admin", value: adminKey }));
  }

  /** Stop authenticating: this and later connections are anonymous. */
  clearAuth() {
    this.auth.clear();
    this.useToken(null);
  }

  /** {state: "connecting" | "connected" | "reconnecting" | "closed", isWebSocketConnected,
   * hasInflightRequests, inflightMutations, inflightActions, timeOfOldestInflightRequest,
   * connectionRetries, connectionCount} */
  connectionState() {
    const { mutations, actions, oldest } = this.protocol.inflight();
    return {
      state: this.state,
      isWebSocketConnected: this.state === "connected",
      hasInflightRequests: mutations + actions > 0,
      inflightMutations: mutations,
      inflightActions: actions,
      timeOfOldestInflightRequest: oldest === null ? null : new Date(oldest),
      connectionRetries: this.retries,
      connectionCount: this.protocol.connectionCount,
    };
  }

  /** `callback(connectionState())` whenever it changes. Returns a function that unsubscribes. */
  onConnectionChange(callback) {
    this.connectionListeners.add(callback);
    return () => this.connectionListeners.delete(callback);
  }

  /** Close the connection for good; requests not settled yet reject. */
  close() {
    if (this.state === "closed") return Promise.resolve();
    this.state = "closed";
    this.auth.clear();
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.inactivityTimer);
    const socket = this.socket;
    this.socket = null;
    for (const [requestId, { reject }] of this.pending) {
      this.protocol.requests.delete(requestId);
      reject(new Error("RippleClient was closed before the request finished"));
    }
    this.pending.clear();
    this.reportConnection();
    if (socket === null || socket.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      socket.onclose = () => resolve();
      socket.onmessage = null;
      socket.close();
    });
  }

  // -- requests ------------------------------------------------------------------------------

  request(kind, path, args) {
    if (this.state === "closed") return Promise.reject(new Error("RippleClient is closed"));
    let wireArgs;
    try {
      wireArgs = callOf(path, args);
    } catch (error) {
      return Promise.reject(error);
    }
    const { requestId, message } = this.protocol.request(kind, path, wireArgs);
    const promise = new Promise((resolve, reject) => this.pending.set(requestId, { resolve, reject, kind, path }));
    this.sendNow(message);
    this.reportConnection();
    return promise;
  }

  settle(requestId, response) {
    const waiter = this.pending.get(requestId);
    if (waiter === undefined) return;
    this.pending.delete(requestId);
    this.printLogLines(waiter.kind[0], waiter.path, response.logLines);
    if (response.success) waiter.resolve(jsonToConvex(response.result));
    else {
      const hasData = response.errorData !== undefined;
      waiter.reject(errorOf(String(response.result), hasData ? jsonToConvex(response.errorData) : undefined, hasData));
    }
  }

  // -- subscriptions (shared with pagination.js) ---------------------------------------------

  _addQuery(path, wireArgs) {
    const { queryId, message } = this.protocol.subscribe(path, wireArgs);
    this.refs.set(queryId, (this.refs.get(queryId) ?? 0) + 1);
    this.sendNow(message);
    return queryId;
  }

  _removeQuery(queryId) {
    const count = (this.refs.get(queryId) ?? 0) - 1;
    if (count > 0) {
      this.refs.set(queryId, count);
      return;
    }
    this.refs.delete(queryId);
    this.sendNow(this.protocol.unsubscribe(queryId));
  }

  _resultOf(queryId) {
    return this.protocol.results.get(queryId);
  }

  _onBatch(hook) {
    this.batchHooks.add(hook);
    return () => this.batchHooks.delete(hook);
  }

  // -- auth (AuthManager's host) -------------------------------------------------------------

  useToken(token) {
    if (token === null && this.protocol.auth === null) return;
    this.sendNow(this.protocol.setAuth(token === null ? null : { tokenType: "User", value: token }));
  }

  released() {
    const messages = this.protocol.release();
    for (const message of messages) this.sendNow(message);
    if (this.handshakeDue && !this.protocol.held) this.handshake();
    this.reportConnection();
  }

  // -- the socket ----------------------------------------------------------------------------

  openSocket() {
    let socket;
    try {
      socket = new this.WebSocket(this.url);
    } catch (error) {
      this.logger.error("RippleClient: cannot open a websocket:", error);
      this.closeReason = "OpenFailed";
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.handshakeDue = true;
      if (!this.protocol.held) this.handshake();
    };
    socket.onmessage = (event) => {
      if (this.socket === socket) this.received(event.data);
    };
    socket.onerror = () => {}; // a close follows; it says what to do
    socket.onclose = (event) => {
      if (this.socket === socket) this.dropSocket(`ServerClosed${event?.code ? ` ${event.code}` : ""}`);
    };
  }

  handshake() {
    this.handshakeDue = false;
    for (const message of this.protocol.connect(this.closeReason)) this.sendNow(message);
    this.state = "connected";
    this.watchInactivity();
    this.reportConnection();
  }

  /** Forget the current socket (closing it if it is still open) and reconnect after a delay. */
  dropSocket(reason) {
    const socket = this.socket;
    this.socket = null;
    this.handshakeDue = false;
    clearTimeout(this.inactivityTimer);
    if (socket !== null) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      if (socket.readyState <= 1) socket.close();
    }
    if (this.protocol.open) {
      for (const event of this.protocol.disconnect()) this.handle(event);
    }
    if (this.state === "closed") return;
    this.closeReason = reason;
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    this.state = "reconnecting";
    this.retries++;
    const delay = this.backoff.next().value;
    this.reportConnection();
    this.reconnectTimer = setTimeout(() => this.openSocket(), delay);
  }

  watchInactivity() {
    clearTimeout(this.inactivityTimer);
    this.inactivityTimer = setTimeout(() => this.dropSocket("InactiveServer"), this.inactivityMs);
  }

  sendNow(message) {
    if (message === null || message === undefined) return;
    const socket = this.socket;
    if (socket !== null && socket.readyState === 1 && this.protocol.open) socket.send(JSON.stringify(message));
  }

  received(data) {
    this.watchInactivity();
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.logger.error("RippleClient: the server sent a message that is not JSON; reconnecting");
      this.dropSocket("BadMessage");
      return;
    }
    let events;
    try {
      events = this.protocol.receive(message);
    } catch (error) {
      // Inconsistent (ProtocolViolation) or malformed: the state is unknown; start over.
      const what = error instanceof ProtocolViolation ? error.message : `a malformed ${message?.type} message (${error})`;
      this.logger.error(`RippleClient: ${what}; reconnecting`);
      this.dropSocket("ProtocolViolation");
      return;
    }
    if (message.type === "Transition" && this.retries > 0) {
      this.retries = 0; // a working connection: the next drop starts the delays again
      this.backoff = this.delays();
    }
    for (const event of events) this.handle(event);
    this.reportConnection();
  }

  handle(event) {
    switch (event.type) {
      case "queries": {
        const changed = new Set(event.ids);
        for (const queryId of changed) {
          const result = this.protocol.results.get(queryId);
          if (result === undefined) continue;
          const query = this.protocol.queries.get(queryId);
          if (query !== undefined) this.printLogLines("Q", query.path, result.logLines);
          for (const listener of [...(this.listeners.get(queryId) ?? [])]) this.safely(() => listener(result));
        }
        for (const hook of [...this.batchHooks]) this.safely(() => hook(changed));
        break;
      }
      case "settled":
        this.settle(event.requestId, event.response);
        break;
      case "authConfirmed":
        this.auth.onConfirmed();
        break;
      case "authError":
        if (this.auth.config !== null) {
          void this.auth.onRefused(event.error);
        } else if (this.protocol.auth !== null) {
          this.logger.error(`RippleClient: the server refused the ${this.protocol.auth.tokenType} token: ${event.error}`);
          this.protocol.auth = null; // the server closes the socket; reconnect without it
        }
        break;
      case "fatal":
        this.logger.error(`RippleClient: the server closed the connection: ${event.error}`);
        break;
    }
  }

  /** A callback's exception must not break the client's bookkeeping; it is logged. */
  safely(fn) {
    try {
      fn();
    } catch (error) {
      this.logger.error("RippleClient: a subscription callback threw:", error);
    }
  }

  printLogLines(kind, path, lines) {
    if (!this.showLogLines || !lines) return;
    for (const line of lines) {
      const level = LEVELS[line.slice(0, line.indexOf("]") + 1)] ?? "log";
      (this.logger[level] ?? this.logger.log)(`[CONVEX ${kind}(${canonicalPath(path)})] ${line}`);
    }
  }

  reportConnection() {
    if (this.connectionListeners.size === 0) return;
    const state = this.connectionState();
    const text = JSON.stringify({ ...state, timeOfOldestInflightRequest: undefined });
    if (text === this.lastReported) return;
    this.lastReported = text;
    for (const listener of [...this.connectionListeners]) this.safely(() => listener(state));
  }
}
