"""What planning an enhance run costs on 100k local inputs, before and after the CLI hands its plan to the flow.

The archive: N inputs already enhanced (their run state compacted into one rollup, as years of nights
leave it) and NEW ones. Before (issue 26): the CLI planned (listed INPUT, read the run state) and the
flow planned again. After: the CLI plans once and writes its plan (rasr/restoration/enhance_run.py
write_plan) for the flow, which reads it. Both are timed side by side in this process, alternating,
best of REPEAT; each line also says how often INPUT was listed and the run state read.

    python bench/listing.py               # 100,000 inputs + 1,000 new (~2 min)
    python bench/listing.py --quick       # 10,000 inputs, one repeat
    python bench/listing.py --smoke       # 300 inputs, seconds (tests/test_benches.py)

The last line is one JSON object: before_s, after_s, ratio, listings and run-state reads per run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build(inp: str, out: str, n: int, new: int) -> None:
    """n inputs done under the bench's config (their rollup written by the project's run state) and `new` not."""
    import pyarrow as pa

    from rasr import runstate
    from rasr.restoration.enhance_run import EnhanceConfig

    cfg_hash = EnhanceConfig(generator="bicubic").hash()
    rel = lambda i: f"{'old' if i < n else 'new'}/{i // 1000:05d}/{i:08d}.png"
    rows = []
    for i in range(n + new):
        path = os.path.join(inp, rel(i))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"\0" * (100 + i % 7))
        os.utime(path, (1600000000 + i, 1600000000 + i))
        if i < n:
            rows.append({"shard_id": f"{i // 64:012x}", "config_hash": cfg_hash, "run_id": "old",
                         "finished_at": (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).isoformat(),
                         "relpath": rel(i), "size": 100 + i % 7, "mtime": f"{1600000000 + i}.000000", "status": "ok",
                         "sha256": f"{i:064x}", "retry": False})
    runstate._write_rollup(out, pa.Table.from_pylist(rows, schema=runstate.SCHEMA))


class Counted:
    """Counts the calls of module.name, and the seconds spent in them, while installed."""

    def __init__(self, module, name: str):
        self.module, self.name, self.calls, self.seconds = module, name, 0, 0.0
        self.original = getattr(module, name)

    def __enter__(self):
        def counting(*a, **k):
            self.calls += 1
            t0 = time.perf_counter()
            try:
                return self.original(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(self.module, self.name, counting)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)


def timed(fn) -> tuple[float, int, int, float, float]:
    """(seconds, listings, run-state reads, seconds listing, seconds reading the run state)."""
    from rasr import catalog, runstate

    with Counted(catalog, "list_inputs") as lists, Counted(runstate, "read") as reads:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, lists.calls, reads.calls, lists.seconds, reads.seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--new", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10,000 inputs, one repeat")
    ap.add_argument("--smoke", action="store_true", help="300 inputs + 20 new, one repeat (run by the test suite)")
    args = ap.parse_args(argv)
    if args.quick:
        args.inputs, args.repeat = 10_000, 1
    if args.smoke:
        args.inputs, args.new, args.repeat = 300, 20, 1
    from rasr.restoration import enhance_run as E

    work_dir = tempfile.mkdtemp(prefix="rasr-bench-listing-")
    try:
        inp, out = os.path.join(work_dir, "in"), os.path.join(work_dir, "out")
        t0 = time.perf_counter()
        build(inp, out, args.inputs, args.new)
        print(f"archive: {args.inputs:,} done + {args.new:,} new inputs ({time.perf_counter() - t0:.1f} s to build)")
        cfg = E.EnhanceConfig(generator="bicubic")

        def before():  # the CLI's plan, then the flow's own
            E.plan(cfg, inp, out)
            return E.plan(cfg, inp, out)

        def after():  # the CLI's plan, handed over
            work = E.plan(cfg, inp, out)
            uri = os.path.join(out, "_state", "plan-bench.parquet")
            E.write_plan(uri, work, cfg)
            handed = E.read_plan(uri, cfg)
            os.remove(uri)
            return handed

        assert [s.id for s in before().shards] == [s.id for s in after().shards], "the handed plan differs"
        res = {"before": [], "after": []}
        for _ in range(args.repeat):
            for name, fn in (("before", before), ("after", after)):
                res[name].append(timed(fn))
        b, a = min(res["before"]), min(res["after"])
        for name, (s, lists, reads, list_s, read_s) in (("before", b), ("after", a)):
            print(f"{name:>6}: {s:6.2f} s to plan   INPUT listed {lists}x ({list_s:.2f} s)   run state read {reads}x "
                  f"({read_s:.2f} s)")
        result = {"inputs": args.inputs, "new": args.new, "before_s": round(b[0], 3), "after_s": round(a[0], 3),
                  "ratio": round(a[0] / b[0], 3), "listings": {"before": b[1], "after": a[1]},
                  "listing_s": {"before": round(b[3], 3), "after": round(a[3], 3)},
                  "run_state_reads": {"before": b[2], "after": a[2]},
                  "run_state_s": {"before": round(b[4], 3), "after": round(a[4], 3)}}
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
