"""What a night costs as the archive grows: a whole `rasr enhance` night of NEW photos on archives of 10k, 100k, 1M.

Each archive is what years of nights leave under OUTPUT, built at its size with the project's own writers: the
run state compacted into rollups (rasr/runstate.py), the manifest (one Parquet file per shard of 64 inputs), the
results page with its row index (appended run by run, rasr/results/results_page.py) and a run summary. The night itself is
the real command, in a fresh process: `rasr enhance INPUT OUTPUT --generator bicubic --input-list KEYS` on NEW
tiny crops of real photos (scikit-image, scikit-learn), through Prefect and Ray, then compaction and the page.
Measured per night: wall time, the command's peak RSS (VmHWM: the process that plans, reads the state and writes
the page; Ray's workers enhance only the new photos) and, on S3 (moto's server behind a counting proxy,
tests/faultproxy.py with no faults), every storage request. The archives are built past the proxy (not counted).

    python bench/scale.py            # archives of 10k, 100k and 1M, local and S3 (~25 min)
    python bench/scale.py --quick    # 2k and 20k (~7 min)
    python bench/scale.py --smoke    # one night of 6 photos on 300, local, in this process (tests/test_benches.py)

Targets (issue 25): the night at the largest archive within 1.2x of the night at the smallest in wall time and
peak RSS; requests per night at most (new photos x a small constant) + (archive / 10,000). The slope is measured
from two night sizes on the largest S3 archive (NEW/2, then NEW). The last line is one JSON object:
night_time_ratio, night_rss_ratio, requests_per_new_photo, requests_fixed (and the figures behind them, with the
largest S3 night's requests by what they touched).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARD = 64
RUN_ROWS = 64 * 1563  # the archive's page is appended in runs of this many rows (whole shards: 100,032)
CROP = 32


def night_config():
    from rasr.restoration.enhance_run import EnhanceConfig

    return EnhanceConfig(generator="bicubic")


def build(out: str, inp: str, archive: int) -> None:
    """The state `archive` enhanced inputs leave under `out` (old enough to have been compacted)."""
    import pyarrow as pa

    from rasr import catalog, manifest, runlog, runstate, storage
    from rasr.results import results_page

    cfg_hash = night_config().hash()
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    at = when.isoformat()
    rel = lambda i: f"old/{i // 1000:05d}/{i:08d}.png"
    parts = []
    for lo in range(0, archive, RUN_ROWS):  # the run state, compacted into one rollup (as a merge leaves it)
        parts.append(pa.Table.from_pylist([
            {"shard_id": f"{i // SHARD:012x}", "config_hash": cfg_hash, "run_id": f"old{lo // RUN_ROWS}",
             "finished_at": at, "relpath": rel(i), "size": 1000 + i % 7, "mtime": f"{1600000000 + i}.000000",
             "status": "ok", "sha256": f"{i:064x}", "retry": False} for i in range(lo, min(archive, lo + RUN_ROWS))],
            schema=runstate.SCHEMA))
    runstate._write_rollup(out, pa.concat_tables(parts))
    del parts

    def row(i: int) -> dict:
        r = manifest.empty_row()
        r.update(source_uri=storage.join(inp, rel(i)), relpath=rel(i), sha256=f"{i:064x}", status="ok",
                 generator="bicubic", config_hash=cfg_hash, run_id=f"old{i // RUN_ROWS}", shard_id=f"{i // SHARD:012x}",
                 ref_ids=[f"{i % 997:064x}"], ref_uris=[f"gallery/{i % 997}.png"], ref_similarities=[0.3 + i % 60 / 100],
                 ref_categories=["animals"], width=8, height=8, out_width=32, out_height=32,
                 timings_ms={k: float(1 + i % 9) for k in manifest.TIMING_FIELDS},
                 processed_at=when + dt.timedelta(seconds=i))
        return r

    tmp = catalog.temp_dir(out)
    for lo in range(0, archive, RUN_ROWS):
        rows = [row(i) for i in range(lo, min(archive, lo + RUN_ROWS))]
        with ThreadPoolExecutor(16) as pool:  # the manifest: one file per shard
            list(pool.map(lambda part: manifest.write_rows(
                manifest.shard_table_uri(out, catalog.MANIFEST_DIR, part[0]["shard_id"]), part, tmp_dir=tmp),
                [rows[s:s + SHARD] for s in range(0, len(rows), SHARD)]))
        results_page.append_run(out, f"old{lo // RUN_ROWS}", rows, workers=16)  # rows with no sprite to make
    runlog.write_run(out, {"run_id": "old", "input": "archive", "generator": "bicubic", "processed": archive,
                           "ok": archive, "started_at": when})


def new_photos(inp: str, first: int, n: int) -> list[str]:
    """n tiny crops of real photos under inp/new/, their keys."""
    import numpy as np
    from PIL import Image

    from rasr import samples, storage

    photos = [samples.as_rgb(samples.load_photo(name)) for name in samples.photo_names()]
    rng = np.random.default_rng(first)
    keys = []

    def one(i: int) -> str:
        img = photos[i % len(photos)]
        y, x = (int(rng.integers(0, img.shape[k] - CROP)) for k in (0, 1))
        buf = io.BytesIO()
        Image.fromarray(img[y:y + CROP, x:x + CROP]).save(buf, format="PNG")
        key = f"new/{i // 1000:04d}/{i:06d}.png"
        storage.write_bytes(storage.join(inp, key), buf.getvalue())
        return key

    with ThreadPoolExecutor(16) as pool:
        keys = list(pool.map(one, range(first, first + n)))
    return keys


def night_command(spec: dict) -> list[str]:
    """The night's `rasr` arguments."""
    return ["enhance", spec["input"], spec["out"], "--generator", "bicubic", "--input-list", spec["keys"]]


def write_hwm(path: str) -> None:
    """This process's peak resident memory (VmHWM, MB) into `path`."""
    with open("/proc/self/status") as f:
        kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM"))
    with open(path, "w") as f:
        f.write(str(kb / 1024))


def night_child(spec: dict) -> None:
    """The night: the real command, in this fresh process; its peak RSS written at exit."""
    atexit.register(write_hwm, spec["hwm"])
    from flows.cli import main

    main(night_command(spec), standalone_mode=True)


KINDS = (("/out/images/", "output images"), ("/out/report/thumbs/", "page sprites"), ("/out/report/", "page data"),
         ("/out/_done", "run state"), ("/out/_leases", "leases"), ("/out/manifest", "manifest"),
         ("/out/_state/", "the CLI's listing"), ("/out/runs", "run summaries"), ("/in/new/", "input photos"))


def by_kind(log: list[tuple[str, str]]) -> dict[str, int]:
    """Requests by what they touched ("GET input photos": n), from the proxy's log."""
    from collections import Counter

    def kind(path: str) -> str:
        if path.count("/") == 1:  # /bucket?list-type=2&prefix=...
            return "listings"
        return next((k for part, k in KINDS if part in path), "other")

    return dict(Counter(f"{method} {kind(path.split('?')[0])}" for method, path in log).most_common())


def night_here(spec: dict) -> tuple[int, str]:
    """The same command in this process (--smoke: the Prefect and Ray this process already has; its RSS says
    nothing): (exit code, stdout)."""
    import contextlib

    from flows.cli import main as rasr

    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buf):
        try:
            rasr(night_command(spec), standalone_mode=False)
        except SystemExit as e:
            code = e.code or 0
    write_hwm(spec["hwm"])
    return code, buf.getvalue()


def run_night(spec: dict, env: dict, proxy=None, here: bool = False) -> dict:
    if proxy is not None:
        proxy.log = []
    before = proxy.requests if proxy else 0
    t = time.perf_counter()
    if here:
        code, stdout = night_here(spec)
        stderr = ""
    else:
        r = subprocess.run([sys.executable, __file__, "--night", json.dumps(spec)], env=env, capture_output=True,
                           text=True)
        code, stdout, stderr = r.returncode, r.stdout, r.stderr
    seconds = time.perf_counter() - t
    if code:
        raise RuntimeError(f"night failed ({code}): {stderr[-3000:]}")
    with open(spec["hwm"]) as f:
        rss = float(f.read())
    processed = next(int(ln.split()[-1]) for ln in stdout.splitlines() if ln.startswith("  processed "))
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1), "processed": processed,
            "requests": (proxy.requests - before) if proxy else None,
            "requests_by_kind": by_kind(proxy.log) if proxy else None}


def build_child(spec: dict) -> None:
    build(spec["out"], spec["in"], spec["archive"])


def child(mode: str, spec: dict, env: dict) -> None:
    r = subprocess.run([sys.executable, __file__, mode, json.dumps(spec)], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--night", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--build", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.night:
        return night_child(json.loads(args.night))
    if args.build:
        return build_child(json.loads(args.build))
    sizes = [300] if args.smoke else [2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000]
    new = 6 if args.smoke else args.new
    stores = ["local"] if args.smoke else ["local", "s3"]
    env = {**os.environ, "RASR_QUIET": "1", "PYTHONPATH": ROOT}
    results, proxy, server, direct = [], None, None, None
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
            direct = f"http://{host}:{port}"
            proxy = FaultProxy(direct, rate=0.0)
            env.update(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_REGION="us-east-1")
            os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")})
            os.environ["AWS_ENDPOINT_URL"] = direct
            import boto3

            boto3.client("s3", endpoint_url=direct).create_bucket(Bucket="scale")
        for store in stores:
            for n in sizes:
                base = os.path.join(tmp, f"{store}-{n}") if store == "local" else f"s3://scale/{n}"
                out, inp = f"{base}/out", f"{base}/in"
                t = time.perf_counter()
                uncounted = {**env, "AWS_ENDPOINT_URL": direct} if direct else env
                if args.smoke:
                    build(out, inp, n)
                else:
                    child("--build", {"out": out, "in": inp, "archive": n}, uncounted)
                slope = store == "s3" and n == sizes[-1]
                halves = [new // 2, new] if slope else [new]
                first, nights = 0, []
                for k, count in enumerate(halves):
                    keys = new_photos(inp, first, count)
                    first += count
                    kf = os.path.join(tmp, f"keys-{store}-{n}-{k}.txt")
                    with open(kf, "w") as f:
                        f.write("".join(f"{key}\n" for key in keys))
                    nights.append(kf)
                print(f"{store} {n:>9,}: archive built in {time.perf_counter() - t:.0f} s", flush=True)
                counted = {**env, "AWS_ENDPOINT_URL": proxy.url} if proxy else env
                for kf, count in zip(nights, halves):
                    spec = {"input": inp, "out": out, "keys": kf, "hwm": os.path.join(tmp, "hwm")}
                    r = run_night(spec, counted, proxy if store == "s3" else None, here=args.smoke)
                    assert r["processed"] == count, r
                    r.update(store=store, archive=n, new=count)
                    results.append(r)
                    print(f"  night of {count:>5}: {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                          f"requests {r['requests'] if r['requests'] is not None else '-'}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.stop()
    return summary(results, sizes, new, stores)


def summary(results: list[dict], sizes: list[int], new: int, stores: list[str]) -> dict:
    pick = lambda store, n, count=new: next(r for r in results if r["store"] == store and r["archive"] == n
                                            and r["new"] == count)
    lo, hi = sizes[0], sizes[-1]
    out = {"archives": sizes, "new": new,
           "night_time_ratio": round(pick("local", hi)["seconds"] / pick("local", lo)["seconds"], 3),
           "night_rss_ratio": round(pick("local", hi)["peak_rss_mb"] / pick("local", lo)["peak_rss_mb"], 3),
           "nights": [{k: r[k] for k in ("store", "archive", "new", "seconds", "peak_rss_mb", "requests")}
                      for r in results]}
    if "s3" in stores:
        full, half = pick("s3", hi), pick("s3", hi, new // 2)
        slope = (full["requests"] - half["requests"]) / (new - new // 2)
        out.update(requests_per_new_photo=round(slope, 3), requests_fixed=round(full["requests"] - slope * new),
                   requests_allowed_fixed=hi // 10_000, requests_by_kind=full["requests_by_kind"],
                   s3_night_time_ratio=round(full["seconds"] / pick("s3", lo)["seconds"], 3),
                   s3_night_rss_ratio=round(full["peak_rss_mb"] / pick("s3", lo)["peak_rss_mb"], 3))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
