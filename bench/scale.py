"""What planning a night costs as the archive grows: the run state and the night's inputs, local and on S3.

A night of NEW new photos on an archive whose run state says ARCHIVE inputs are already done (written as the shard
task writes it: one done-marker per 64 inputs), planned the way `rasr enhance` plans (rasr.enhance_run.plan):

    listing   the night lists INPUT (only the local variant: the archive's files exist there)
    list      the night is told what is new (--input-list; the old photos need not even be there)

each with the run state as loose markers (before) and compacted (rasr/runstate.py), at several archive sizes.
Each measurement runs in a fresh process (its peak RSS is its own); S3 goes through moto's server behind a
counting proxy (tests/faultproxy.py with no faults), so requests are counted, not estimated.

    python bench/scale.py            # archives of 10k, 100k and 1M done inputs (~15 min)
    python bench/scale.py --quick    # 2k and 20k (~2 min)
    python bench/scale.py --smoke    # 1k and 4k, local only (seconds; tests/test_benches.py)

Not measured here yet (issue 25): the rest of a night (enhancing, the manifest, the results page), whose page
still reads the whole manifest. The last line is one JSON object: plan_time_ratio, plan_rss_ratio,
requests_per_new_photo, requests_fixed (list + compacted state, largest vs smallest archive).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARD = 64


def write_state(out: str, archive: int, new_root: str, new: int) -> None:
    """Done-markers for `archive` inputs (old enough to be compacted), and `new` real files under new_root."""
    from rasr import catalog, storage

    from rasr.enhance_run import EnhanceConfig

    cfg_hash = EnhanceConfig(generator="bicubic").hash()  # the config `measure` plans with
    at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).isoformat()
    local = not storage.is_remote(out)
    for s in range(0, archive, SHARD):
        sid = f"{s:012x}"
        marker = {"shard_id": sid, "config_hash": cfg_hash, "run_id": "old", "finished_at": at, "counts": {"ok": SHARD},
                  "items": [{"relpath": f"old/{i // 1000:05d}/{i:08d}.png", "size": 1000 + i % 7,
                             "mtime": f"{1600000000 + i}.000000", "status": "ok", "sha256": f"{i:064x}"}
                            for i in range(s, min(archive, s + SHARD))]}
        data = json.dumps(marker).encode()
        if local:
            path = os.path.join(out, catalog.DONE_DIR, f"shard={sid}.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        else:
            storage.write_bytes(catalog.done_marker_uri(out, sid), data)
    for i in range(new):
        storage.write_bytes(storage.join(new_root, f"new/{i:06d}.png"), b"\x89PNG" + i.to_bytes(4, "big"))


def measure(args: dict) -> dict:
    """One plan in this (fresh) process: wall time, peak RSS, what it planned."""
    from rasr import enhance_run as E

    cfg = E.EnhanceConfig(generator="bicubic", input_list=args.get("input_list"))
    t = time.perf_counter()
    work = E.plan(cfg, args["input"], args["out"])
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": _hwm_mb(), "todo": work.todo, "listed": work.listed}


def _hwm_mb() -> float:
    """This process's peak resident memory since its exec (VmHWM; ru_maxrss would count the parent's pages it was
    forked with)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024


def run_child(args: dict, env: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return {}
    from rasr import runstate
    sizes = [1_000, 4_000] if args.smoke else [2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000]
    new = 50 if args.smoke else args.new
    stores = ["local"] if args.smoke else ["local", "s3"]
    env = {**os.environ, "RASR_QUIET": "1"}
    results, proxy, server = [], None, None
    tmp = tempfile.mkdtemp(prefix="rasr-scale-")
    try:
        if "s3" in stores:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from faultproxy import FaultProxy

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            proxy = FaultProxy(f"http://{host}:{port}", rate=0.0)
            env.update(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_REGION="us-east-1",
                       AWS_ENDPOINT_URL=proxy.url)
            os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                                   "AWS_ENDPOINT_URL")})
            import boto3

            boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="scale")
        for store in stores:
            for n in sizes:
                base = os.path.join(tmp, f"{store}-{n}") if store == "local" else f"s3://scale/{n}"
                out, inp = f"{base}/out", f"{base}/in"
                t = time.perf_counter()
                write_state(out, n, inp, new)
                keys = os.path.join(tmp, f"keys-{store}-{n}.txt")
                with open(keys, "w") as f:
                    f.write("".join(f"new/{i:06d}.png\n" for i in range(new)))
                print(f"{store} {n:>9,}: state written in {time.perf_counter() - t:.0f} s", flush=True)
                for state in ("loose", "compacted"):
                    if state == "compacted":
                        did = runstate.compact(out, "bench")
                        assert did.get("markers_rolled"), did
                    for how in (("list", "listing") if store == "local" else ("list",)):
                        if how == "listing" and n > 100_000:
                            continue  # a million files to list: the listing is what --input-list avoids
                        if how == "listing":
                            _old_files(inp, n)
                        before = proxy.requests if proxy else 0
                        r = run_child({"input": inp, "out": out, "input_list": keys if how == "list" else None}, env)
                        r.update(store=store, archive=n, state=state, how=how,
                                 requests=(proxy.requests - before) if proxy else None)
                        assert r["todo"] == new, r
                        results.append(r)
                        if store == "s3" and state == "compacted" and n == sizes[-1]:  # half the night: the slope
                            half = os.path.join(tmp, f"keys-half-{n}.txt")
                            with open(half, "w") as f:
                                f.write("".join(f"new/{i:06d}.png\n" for i in range(new // 2)))
                            before = proxy.requests
                            run_child({"input": inp, "out": out, "input_list": half}, env)
                            r["requests_half_night"] = proxy.requests - before
                        print(f"  {state:<9} {how:<8} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                              f"requests {r['requests'] if r['requests'] is not None else '-'}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.stop()
    return summary(results, sizes, new, stores)


def _old_files(inp: str, n: int) -> None:
    """The archive's files themselves (local), for the listing variant: sparse files of the size and time the state
    records, so the listing finds them done."""
    for i in range(n):
        path = os.path.join(inp, f"old/{i // 1000:05d}/{i:08d}.png")
        if i % 1000 == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(1000 + i % 7)
        os.utime(path, (1600000000 + i, 1600000000 + i))


def summary(results: list[dict], sizes: list[int], new: int, stores: list[str]) -> dict:
    pick = lambda store, n: next(r for r in results if r["store"] == store and r["archive"] == n
                                 and r["state"] == "compacted" and r["how"] == "list")
    lo, hi = sizes[0], sizes[-1]
    out = {"archives": sizes, "new": new,
           "plan_time_ratio": round(pick("local", hi)["seconds"] / pick("local", lo)["seconds"], 3),
           "plan_rss_ratio": round(pick("local", hi)["peak_rss_mb"] / pick("local", lo)["peak_rss_mb"], 3)}
    if "s3" in stores:
        big = pick("s3", hi)
        slope = (big["requests"] - big["requests_half_night"]) / (new - new // 2)  # measured, two night sizes
        out.update(requests_per_new_photo=round(slope, 3), requests_fixed=round(big["requests"] - slope * new),
                   requests_small_archive=pick("s3", lo)["requests"], requests_large_archive=big["requests"],
                   requests_loose=next(r["requests"] for r in results if r["store"] == "s3" and r["archive"] == hi
                                       and r["state"] == "loose"))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
