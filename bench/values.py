"""The cost of converting values, before and after: what every live-query run and every read
pays (documents decoded from PostgreSQL, results encoded for clients).

What is measured
----------------
In-process, on one set of documents shaped like an app's (`--docs` documents, each with system
fields, ten top-level fields of mixed types, a nested object and a short array):

* decode  -- `from_convex_json` of each stored document (PostgreSQL's jsonb as asyncpg hands it).
* encode  -- the result sent to clients: `to_wire_json` when the tree has it, else
             `to_convex_json` (what was sent before), serialized with `dumps` / `orjson.dumps`.

Both trees' `server/core/values.py` run in this process, alternating, `--runs` times: "after",
the working tree, and "before", `--baseline` (a git revision, default HEAD~1) exported with
`git archive`. Figures are microseconds per document (the best of the runs); compare before
and after of the same invocation. Results go to bench/results/values-<UTC time>.json.

    python bench/values.py [--baseline REV] [--docs 1000] [--runs 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def load_values(root: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, root / "server" / "core" / "values.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def baseline_tree(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "archive", rev, "server"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def documents(n: int) -> list[Any]:
    """Stored documents as PostgreSQL returns jsonb: keys shortest first."""
    out = []
    for i in range(n):
        doc = {
            "title": f"video {i}", "status": "pending", "creator": f"user{i % 50}", "views": i * 3,
            "score": i / 7, "approved": i % 2 == 0, "tags": ["a", "b", str(i)], "durationSec": 61,
            "meta": {"width": 1920, "height": 1080, "codec": "h264"}, "note": None,
        }
        out.append(json.loads(json.dumps(dict(sorted(doc.items(), key=lambda kv: (len(kv[0]), kv[0]))))))
    return out


def timed(fn: Any, items: list[Any]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e6


def measure(values: ModuleType, stored: list[Any]) -> dict[str, float]:
    decoded = [values.from_convex_json(d) for d in stored]
    if hasattr(values, "to_wire_json"):
        def encode(v: Any) -> bytes:
            return values.dumps(values.to_wire_json(v))  # type: ignore[no-any-return]
    else:
        def encode(v: Any) -> bytes:
            return orjson.dumps(values.to_convex_json(v))
    return {"decode_us": timed(values.from_convex_json, stored), "encode_us": timed(encode, decoded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD~1")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    stored = documents(opts.docs)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": load_values(baseline_tree(opts.baseline, Path(tmp)), "values_before"),
                 "after": load_values(ROOT, "values_after")}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(opts.runs):
            for name, module in trees.items():
                runs[name].append(measure(module, stored))
    summary = {name: {k: round(min(r[k] for r in rs), 2) for k in rs[0]} for name, rs in runs.items()}
    for name, figures in summary.items():
        print(f"{name:>6}: decode {figures['decode_us']:7.2f} us/doc   encode {figures['encode_us']:7.2f} us/doc")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"values-{stamp}.json"
    path.write_text(json.dumps({"baseline": opts.baseline, "docs": opts.docs, "runs": runs, "summary": summary}, indent=2))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
