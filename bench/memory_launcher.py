"""Runs `python -m server.cli` (same arguments) for bench/memory.py, with tracemalloc when asked.

Used only by the benchmark; nothing under server/ knows about it. With RIPPLE_DEBUG_TRACEMALLOC=N
(N frames per traceback, e.g. 1) tracemalloc starts before the server is imported, and every
SIGUSR2 writes a snapshot to RIPPLE_DEBUG_TRACEMALLOC_DIR/snapshot-<k>.tracemalloc (k = 1, 2,
...) and then an empty `<name>.done` file beside it, which bench/memory.py waits for and compares
(tracemalloc.Snapshot.compare_to). Without the variable it only runs the server. It prints
where it imported `server` from (the tree bench/memory.py asked for).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def _dumper(directory: Path) -> None:
    count = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        path = directory / f"snapshot-{count}.tracemalloc"
        tracemalloc.take_snapshot().dump(str(path))
        (directory / f"{path.name}.done").touch()

    signal.signal(signal.SIGUSR2, dump)


def main() -> None:
    frames = os.environ.get("RIPPLE_DEBUG_TRACEMALLOC")
    if frames:
        tracemalloc.start(int(frames))
        _dumper(Path(os.environ["RIPPLE_DEBUG_TRACEMALLOC_DIR"]))
    import server

    print(f"memory_launcher: server from {server.__file__}", flush=True)  # bench/memory.py checks it
    sys.argv = ["server.cli", *sys.argv[1:]]
    runpy.run_module("server.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
