// The client side of the Convex sync protocol as a sans-I/O state machine: fed server messages,
// asked for the messages to send. It does no I/O and sets no timers; ripple.js owns the socket.
//
// What survives a reconnect: the subscribed queries (with their journals), the auth token, and
// every mutation not yet settled. What is per socket: the query-set and identity versions and the
// version of the last Transition. On a new socket `connect()` gives, in order: Connect,
// Authenticate (when there is a token), the whole query set as ModifyQuerySet 0 -> 1, then every
// unsettled mutation and every request not sent yet. The server runs a (session id, request id)
// once and answers a resend with the stored result (docs/live-queries.md), so a mutation is
// never run twice; actions are never resent: one in flight when the socket drops fails.

import { decodeTs, encodeTs, jsonToConvex, stableStringify } from "./values.js";

/** `dir/module:export`, with `dir/module` meaning `:default` and a `.js` suffix dropped. */
export function canonicalPath(path) {
  const cut = path.lastIndexOf(":");
  let module = cut === -1 ? path : path.slice(0, cut);
  const name = cut === -1 ? "default" : path.slice(cut + 1);
  if (module.endsWith(".js")) module = module.slice(0, -3);
  return `${module}:${name}`;
}

export class ProtocolViolation extends Error {}

const LOST_ACTION = "Connection lost while action was in flight";

export class SyncProtocol {
  constructor(sessionId) {
    this.sessionId = sessionId;
    this.connectionCount = 0;
    this.open = false; // Connect sent on the current socket
    this.holds = 0; // while above 0 requests wait, unsent (an auth token is being fetched)
    this.queries = new Map(); // queryId -> {queryId, path, args (wire JSON), journal}
    this.byToken = new Map(); // stable text of [path, args] -> queryId
    this.results = new Map(); // queryId -> {ok, value, errorMessage, errorData, hasErrorData, logLines}
    this.requests = new Map(); // requestId -> {kind, path, message, status, ts, response, since}
    this.auth = null; // {tokenType: "User" | "Admin", value}
    this.nextQueryId = 0;
    this.nextRequestId = 0;
    this.querySetVersion = 0;
    this.identityVersion = 0;
    this.remote = { querySet: 0, identity: 0, ts: 0n };
    this.maxObservedTs = 0n;
  }

  // -- socket lifecycle ----------------------------------------------------------------------

  /** The messages that open a new socket, in order. Not while held: mutations resent before the
   * token they were made under would run with another identity. */
  connect(lastCloseReason) {
    if (this.held) throw new Error("connect() while requests are held");
    this.open = true;
    this.remote = { querySet: 0, identity: 0, ts: 0n };
    const connect = {
      type: "Connect",
      sessionId: this.sessionId,
      connectionCount: this.connectionCount++,
      lastCloseReason,
      clientTs: Date.now(),
    };
    if (this.maxObservedTs > 0n) connect.maxObservedTimestamp = encodeTs(this.maxObservedTs);
    const messages = [connect];
    this.identityVersion = 0;
    if (this.auth !== null) {
      messages.push({ type: "Authenticate", baseVersion: 0, ...this.auth });
      this.identityVersion = 1;
    }
    this.querySetVersion = 1;
    const adds = [...this.queries.values()].map(addOf);
    messages.push({ type: "ModifyQuerySet", baseVersion: 0, newVersion: 1, modifications: adds });
    for (const request of this.requests.values()) {
      if (request.kind === "Mutation" || request.status === "unsent") {
        if (request.status === "unsent") request.status = "sent";
        messages.push(request.message);
      }
    }
    return messages;
  }

  /** The socket closed: actions in flight fail (never resent); the rest waits for `connect`. */
  disconnect() {
    this.open = false;
    const events = [];
    for (const [requestId, request] of this.requests) {
      if (request.kind === "Action" && request.status === "sent") {
        this.requests.delete(requestId);
        events.push({ type: "settled", requestId, response: { success: false, result: LOST_ACTION, logLines: [] } });
      }
    }
    return events;
  }

  get held() {
    return this.holds > 0;
  }

  /** Hold requests back (unsent) until as many `release()` calls. */
  hold() {
    this.holds++;
  }

  /** End one hold; when none is left, the requests made meanwhile, to send now (none when no
   * socket is open: `connect` sends them). */
  release() {
    this.holds--;
    if (this.holds > 0 || !this.open) return [];
    const messages = [];
    for (const request of this.requests.values()) {
      if (request.status === "unsent") {
        request.status = "sent";
        messages.push(request.message);
      }
    }
    return messages;
  }

  // -- local changes -------------------------------------------------------------------------

  /** Subscribe (identical path and args share one query): {queryId, message to send or null}. */
  subscribe(path, args) {
    const canonical = canonicalPath(path);
    const token = stableStringify([canonical, args]);
    const existing = this.byToken.get(token);
    if (existing !== undefined) return { queryId: existing, message: null };
    const query = { queryId: this.nextQueryId++, path: canonical, args, journal: undefined, token };
    this.queries.set(query.queryId, query);
    this.byToken.set(token, query.queryId);
    return { queryId: query.queryId, message: this.modify([addOf(query)]) };
  }

  unsubscribe(queryId) {
    const query = this.queries.get(queryId);
    if (query === undefined) return null;
    this.queries.delete(queryId);
    this.byToken.delete(query.token);
    this.results.delete(queryId);
    return this.modify([{ type: "Remove", queryId }]);
  }

  modify(modifications) {
    if (!this.open) return null; // `connect` sends the whole set
    const base = this.querySetVersion++;
    return { type: "ModifyQuerySet", baseVersion: base, newVersion: base + 1, modifications };
  }

  /** A new Mutation or Action: {requestId, message to send now or null}. */
  request(kind, path, args) {
    const requestId = this.nextRequestId++;
    const message = { type: kind, requestId, udfPath: path, args: [args] };
    const send = this.open && !this.held;
    this.requests.set(requestId, { kind, path, message, status: send ? "sent" : "unsent", ts: 0n, response: null, since: Date.now() });
    return { requestId, message: send ? message : null };
  }

  /** Use `auth` ({tokenType, value}, or null for none) from now on: the message to send now or null. */
  setAuth(auth) {
    this.auth = auth;
    if (!this.open) return null;
    const baseVersion = this.identityVersion++;
    return auth === null ? { type: "Authenticate", baseVersion, tokenType: "None" } : { type: "Authenticate", baseVersion, ...auth };
  }

  // -- server messages -----------------------------------------------------------------------

  /** One parsed server message -> events: {type: "queries", ids}, {type: "settled", requestId,
   * response}, {type: "authConfirmed"}, {type: "authError", error, authUpdateAttempted},
   * {type: "fatal", error}. Throws ProtocolViolation on an inconsistent Transition. */
  receive(message) {
    switch (message.type) {
      case "Transition":
        return this.transition(message);
      case "MutationResponse":
      case "ActionResponse":
        return this.response(message);
      case "AuthError":
        // An error about an identity the client has since replaced is old news.
        if (message.baseVersion + 1 < this.identityVersion) return [];
        return [{ type: "authError", error: String(message.error), authUpdateAttempted: message.authUpdateAttempted }];
      case "FatalError":
        return [{ type: "fatal", error: String(message.error) }];
      default:
        return []; // Ping, and anything newer this client does not know
    }
  }

  transition(message) {
    const start = versionOf(message.startVersion);
    const end = versionOf(message.endVersion);
    const r = this.remote;
    if (start.querySet !== r.querySet || start.identity !== r.identity || start.ts !== r.ts) {
      throw new ProtocolViolation(
        `Transition starts at ${show(start)} but the client is at ${show(r)}`,
      );
    }
    const ids = [];
    for (const mod of message.modifications) {
      const query = this.queries.get(mod.queryId);
      if (mod.type === "QueryRemoved" || query === undefined) continue; // unsubscribed meanwhile
      if (mod.type === "QueryUpdated") {
        this.results.set(mod.queryId, { ok: true, value: jsonToConvex(mod.value), logLines: mod.logLines ?? [] });
      } else if (mod.type === "QueryFailed") {
        const hasErrorData = mod.errorData !== undefined;
        this.results.set(mod.queryId, {
          ok: false,
          errorMessage: mod.errorMessage,
          errorData: hasErrorData ? jsonToConvex(mod.errorData) : undefined,
          hasErrorData,
          logLines: mod.logLines ?? [],
        });
      } else {
        continue;
      }
      if (mod.journal !== undefined) query.journal = mod.journal;
      ids.push(mod.queryId);
    }
    this.remote = end;
    if (end.ts > this.maxObservedTs) this.maxObservedTs = end.ts;
    const events = ids.length ? [{ type: "queries", ids }] : [];
    if (end.identity > start.identity && end.identity === this.identityVersion) events.push({ type: "authConfirmed" });
    // Read your writes: a mutation settles on the first Transition after its response that
    // reaches its commit ts, so the queries above already show its writes.
    for (const [requestId, request] of this.requests) {
      if (request.status === "completed" && request.ts <= end.ts) {
        this.requests.delete(requestId);
        events.push({ type: "settled", requestId, response: request.response });
      }
    }
    return events;
  }

  response(message) {
    const request = this.requests.get(message.requestId);
    // A resend after a reconnect can answer a mutation already completed (or settled): ignore it.
    if (request === undefined || request.status === "completed") return [];
    if (message.type === "ActionResponse" || !message.success) {
      this.requests.delete(message.requestId);
      return [{ type: "settled", requestId: message.requestId, response: message }];
    }
    request.status = "completed";
    request.response = message;
    request.ts = decodeTs(message.ts);
    if (request.ts > this.maxObservedTs) this.maxObservedTs = request.ts;
    return [];
  }

  // -- state ---------------------------------------------------------------------------------

  inflight() {
    let mutations = 0;
    let actions = 0;
    let oldest = null;
    for (const request of this.requests.values()) {
      if (request.kind === "Mutation") mutations++;
      else actions++;
      if (oldest === null || request.since < oldest) oldest = request.since;
    }
    return { mutations, actions, oldest };
  }
}

function addOf(query) {
  const add = { type: "Add", queryId: query.queryId, udfPath: query.path, args: [query.args] };
  if (query.journal !== undefined) add.journal = query.journal;
  return add;
}

function versionOf(v) {
  return { querySet: v.querySet, identity: v.identity, ts: decodeTs(v.ts) };
}

function show(v) {
  return `{querySet: ${v.querySet}, identity: ${v.identity}, ts: ${v.ts}}`;
}
