"""Retry and reconnect delays: one policy, as a generator (see STYLE.md, "policies are pure code")."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Literal


def exponential_backoff(first: float, cap: float, *, jitter: Literal["full", "half", "none"] = "full") -> Iterator[float]:
    """Delays that double from `first` up to `cap`.

    jitter="full": each delay is uniform in [0, d] (best to spread retries of conflicting
    transactions); "half": uniform in [d/2, d] (reconnects: never hammer, still spread);
    "none": exactly d."""
    delay = first
    while True:
        if jitter == "full":
            yield random.uniform(0, delay)
        elif jitter == "half":
            yield delay * random.uniform(0.5, 1.0)
        else:
            yield delay
        delay = min(cap, delay * 2)


def conflict_retry_delays() -> Iterator[float]:
    """For retrying a serializable transaction that lost a conflict: 4 ms doubling to 250 ms."""
    return exponential_backoff(0.004, 0.25, jitter="full")


def reconnect_delays(first: float = 0.05, cap: float = 5.0) -> Iterator[float]:
    """For re-opening a lost connection: 50 ms doubling to `cap`, half jitter."""
    return exponential_backoff(first, cap, jitter="half")
