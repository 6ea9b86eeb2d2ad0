// Type declarations for ripple.js, for editors and TypeScript users (hand-written; the module
// itself is plain JavaScript with no build step). See docs/js-sdk.md.

/** A Convex value as this client gives and takes it. int64 is a bigint, bytes an ArrayBuffer
 * (any typed array or DataView is accepted when sending). */
export type Value =
  | null
  | boolean
  | number
  | bigint
  | string
  | ArrayBuffer
  | ArrayBufferView
  | Value[]
  | { [field: string]: Value | undefined };

/** The arguments object of a function. */
export type Args = Record<string, Value | undefined>;

/** An application error a function raised with `ConvexError(data)`. */
export class ConvexError<Data = Value> extends Error {
  readonly name: "ConvexError";
  readonly data: Data;
  constructor(message: string, data: Data);
}

export interface ClientOptions {
  /** The WebSocket class; default the global one. Node 20 has none: pass `ws`'s. */
  webSocketConstructor?: new (url: string) => WebSocket;
  /** Reconnect delays: doubling from initialMs (default 250) to maxMs (default 10000), jittered. */
  reconnectDelay?: { initialMs?: number; maxMs?: number };
  /** Reconnect after this long without a server message (default 60000; the server pings every 15 s). */
  inactivityTimeoutMs?: number;
  /** Fetch a fresh auth token this many seconds before the current one expires (default 10). */
  refreshTokenLeewaySeconds?: number;
  /** Where the client's own messages and functions' log lines go (default console). */
  logger?: Pick<Console, "log" | "info" | "warn" | "error" | "debug">;
  /** Print the log lines functions send back (default true). */
  showLogLines?: boolean;
}

export interface ConnectionState {
  state: "connecting" | "connected" | "reconnecting" | "closed";
  isWebSocketConnected: boolean;
  hasInflightRequests: boolean;
  /** Mutations sent or waiting to be sent whose promise has not settled (resent on reconnect). */
  inflightMutations: number;
  inflightActions: number;
  timeOfOldestInflightRequest: Date | null;
  /** Connection attempts since the last one that received a Transition. */
  connectionRetries: number;
  /** Sockets opened so far. */
  connectionCount: number;
}

export type PaginationStatus = "LoadingFirstPage" | "CanLoadMore" | "LoadingMore" | "Exhausted";

export interface PaginatedResult<T = any> {
  results: T[];
  status: PaginationStatus;
  /** Ask for `numItems` more; false when the last page is still loading or nothing is left. */
  loadMore(numItems: number): boolean;
}

export interface PaginatedHandle<T = any> {
  readonly results: T[];
  readonly status: PaginationStatus;
  loadMore(numItems: number): boolean;
  unsubscribe(): void;
}

export type AuthTokenFetcher = (args: { forceRefreshToken: boolean }) => Promise<string | null | undefined>;

export class RippleClient {
  /** @param url the deployment, `http(s)://host:port`; the client connects to `ws(s)://host:port/api/sync`. */
  constructor(url: string, options?: ClientOptions);

  /** Live query: `callback` with the result now (when known) and after every change, `onError`
   * when it fails (it keeps running and recovers). Identical subscriptions share one server
   * query. Returns a function that unsubscribes. */
  onUpdate<T = any>(path: string, args: Args, callback: (value: T) => void, onError?: (error: Error) => void): () => void;

  /** The current result of a query, read through a subscription. */
  query<T = any>(path: string, args?: Args): Promise<T>;

  /** Resolves with the result once this client's subscriptions show the mutation's writes.
   * Queued while disconnected; runs exactly once however often it is resent. */
  mutation<T = any>(path: string, args?: Args): Promise<T>;

  /** Runs an action; it fails if the connection drops while it runs (actions are never resent). */
  action<T = any>(path: string, args?: Args): Promise<T>;

  /** Live paginated query over a function taking `paginationOpts` (added by the client). */
  onPaginatedUpdate<T = any>(
    path: string,
    args: Args,
    options: { initialNumItems: number },
    callback: (result: PaginatedResult<T>) => void,
    onError?: (error: Error) => void,
  ): PaginatedHandle<T>;

  /** Authenticate as a user with JWTs from `fetchToken`; `onChange(true)` once the server accepts
   * one, `onChange(false)` when none is accepted. Resolves once the first token was sent. */
  setAuth(fetchToken: AuthTokenFetcher, onChange?: (isAuthenticated: boolean) => void): Promise<void>;

  /** Authenticate with the deployment's admin key (internal functions become callable). */
  setAdminAuth(adminKey: string): void;

  /** Anonymous from now on. */
  clearAuth(): void;

  connectionState(): ConnectionState;

  /** `callback` whenever connectionState() changes. Returns a function that unsubscribes. */
  onConnectionChange(callback: (state: ConnectionState) => void): () => void;

  /** Closes the connection for good; unsettled requests reject. */
  close(): Promise<void>;
}

/** Reconnect delays in ms (exponential, jittered). */
export function backoff(initialMs?: number, maxMs?: number): Generator<number, never, void>;

/** A value as Convex's JSON wire encoding; throws TypeError naming the path of a bad value. */
export function convexToJson(value: Value, path?: string): unknown;

/** Convex's JSON wire encoding as values: `$integer` -> bigint, `$float` -> number, `$bytes` -> ArrayBuffer. */
export function jsonToConvex(json: unknown): Value;
