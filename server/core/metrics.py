"""Process-wide counters, gauges and histograms, rendered in the Prometheus text format."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float]] = {}
        self.help: dict[str, tuple[str, str]] = {}
        self.buckets: dict[str, tuple[float, ...]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self.help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += amount

    def value(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def histogram(self, name: str, buckets: tuple[float, ...], text: str) -> None:
        """Declare a histogram: `observe` counts into `<name>_bucket{le=...}`, `_sum`, `_count`."""
        self.describe(name, "histogram", text)
        self.buckets[name] = buckets

    def observe(self, name: str, value: float, **labels: str) -> None:
        for bound in self.buckets[name]:  # every bucket, so a series exists from the first observation
            self.inc(f"{name}_bucket", 1.0 if value <= bound else 0.0, le=exposition_number(bound), **labels)
        self.inc(f"{name}_bucket", 1.0, le="+Inf", **labels)
        self.inc(f"{name}_sum", value, **labels)
        self.inc(f"{name}_count", 1.0, **labels)

    def _family(self, series: str) -> str:
        """The metric a series belongs to: a histogram's `_bucket`, `_sum`, `_count` are its own."""
        base, _, suffix = series.rpartition("_")
        return base if suffix in ("bucket", "sum", "count") and base in self.buckets else series

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()

        def header(name: str) -> None:
            name = self._family(name)
            if name not in seen and name in self.help:
                kind, text = self.help[name]
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
            seen.add(name)

        for name in sorted(self.help):
            if name in self.gauges or any(self._family(key[0]) == name for key in self.counters):
                continue
            if name in self.buckets:  # a histogram with no observation yet: no series
                header(name)
                continue
            header(name)  # nothing counted yet (or no such component running): zero
            lines.append(f"{name} 0")
        for (name, labels), value in sorted(self.counters.items()):
            header(name)
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels)
            text = exposition_number(value)
            lines.append(f"{name}{{{label_text}}} {text}" if labels else f"{name} {text}")
        for name, read in sorted(self.gauges.items()):
            header(name)
            lines.append(f"{name} {exposition_number(read())}")
        return "\n".join(lines) + "\n"


def exposition_number(value: float) -> str:
    """Exposition-format number: whole values in full (a counter of 1,234,567 is not 1.23457e+06)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


def _escape(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def standard_metrics() -> Metrics:
    m = Metrics()
    m.describe("ripple_query_executions_total", "counter", "Query function executions")
    m.describe("ripple_mutations_total", "counter", "Mutation executions by outcome")
    m.describe("ripple_mutation_retries_total", "counter", "Mutation attempts retried after a conflict")
    m.describe("ripple_mutation_queued_total", "counter",
               "Mutation attempts that waited their turn in a hot-key queue behind a conflicting mutation")
    m.describe("ripple_mutation_queue_timeouts_total", "counter",
               "Keys a queued mutation attempt stopped waiting for (it ran without their turn)")
    m.describe("ripple_hot_keys", "gauge", "Keys (documents, index ranges) this process queues mutations on")
    m.describe("ripple_connection_retries_total", "counter",
               "Transactions and queries run again after losing the database connection before COMMIT")
    m.describe("ripple_commit_resolutions_total", "counter",
               "COMMITs whose answer a lost database connection cut off, by what resolving them found")
    m.describe("ripple_query_cache_hits_total", "counter", "Queries at the latest ts answered from the query cache")
    m.describe("ripple_query_cache_misses_total", "counter", "Queries at the latest ts the query cache could not answer (run)")
    m.describe("ripple_query_cache_evictions_total", "counter", "Query cache entries dropped to stay within RIPPLE_QUERY_CACHE_BYTES")
    m.describe("ripple_query_cache_invalidations_total", "counter", "Query cache entries dropped because a commit wrote into what they read")
    m.describe("ripple_query_cache_bytes", "gauge", "Bytes of results held by the query cache")
    m.describe("ripple_actions_total", "counter", "Action executions by outcome")
    m.describe("ripple_vector_searches_total", "counter", "ctx.vector_search calls by how they ran")
    m.describe("ripple_function_errors_total", "counter", "Function calls that ended in an error")
    m.describe("ripple_function_timeouts_total", "counter", "Function calls stopped by a time limit")
    m.describe("ripple_event_loop_blocks_total", "counter", "Blocks of the event loop of at least RIPPLE_BLOCKED_LOOP_WARNING, by who blocked it")
    m.describe("ripple_event_loop_blocked_seconds_total", "counter", "Seconds the event loop was blocked in those blocks")
    m.describe("ripple_subscriptions", "gauge", "Live query subscriptions")
    m.describe("ripple_websocket_clients", "gauge", "Connected websocket clients")
    m.describe("ripple_log_readers", "gauge", "Long polls of GET /_ripple/logs waiting for an entry")
    m.describe("ripple_worker", "gauge", "Which worker of `ripple serve --workers N` this process is (1..N; 0: not one)")
    m.describe("ripple_shared_queries", "gauge", "Distinct shared query executions kept live")
    m.describe("ripple_websocket_connections_total", "counter", "Websocket connections accepted")
    m.describe("ripple_live_query_runs_apart_total", "counter", "Live query runs that overran their slice or were known slow, run apart from the ticks")
    m.describe("ripple_live_query_parallel_runs_total", "counter", "Live query runs a tick started on a helper connection sharing its snapshot (RIPPLE_LIVE_QUERY_PARALLELISM)")
    m.describe("ripple_live_query_helpers_lost_total", "counter", "Helper connections of a tick that failed while running a query (the query runs again at the next tick)")
    m.describe("ripple_live_query_rests_total", "counter", "Live query runs that timed out, after which the query rests before writes make it run again")
    m.describe("ripple_live_queries_pending", "gauge", "Shared queries whose results are not valid at ripple_live_query_ts yet (being run, or waiting for a tick)")
    m.describe("ripple_websocket_limit_total", "counter",
               "Times a websocket connection reached a per-connection limit, by limit")
    m.describe("ripple_websocket_outbox_bytes", "gauge", "Bytes of responses waiting for websocket clients to read them")
    m.describe("ripple_websocket_pending_mutations", "gauge", "Mutations received on websockets and not run yet")
    m.describe("ripple_websocket_actions", "gauge", "Actions running for websocket clients")
    m.describe("ripple_live_query_ts", "gauge", "Commit ts every live result of this process is valid at")
    m.describe("ripple_scheduled_jobs_total", "counter", "Scheduled jobs by final state")
    m.describe("ripple_http_requests_total", "counter", "HTTP API requests by route and status")
    m.describe("ripple_http_action_requests_total", "counter", "HTTP action requests by route and status")
    m.histogram("ripple_http_action_duration_seconds", (0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 60.0),
                "Time from an HTTP action's request to the end of its response, by route")
    return m
