"""Retrieval benchmark: Gallery.search (exact and ANN) against a plain torch matmul + topk, on CPU.

Data: synthetic 1280-d unit vectors shaped like image embeddings, seeded: `CENTRES` cluster centres drawn
around 64 coarse groups; each point = its centre + a variation of norm 0.6 in the cluster's own 8-d
subspace + isotropic noise of norm 0.15, normalised (neighbours are close within a cluster and the local
intrinsic dimension is low, as with real encoders: a query's top-1 similarity averages ~0.90, its 5th
~0.85). 20 categories. Queries: held-out points of the same mixture plus noise of norm 0.1.

    python bench/retrieval.py            # 100k exact, 1M ANN, crossover at 100k..1M (8-20 min, peak RSS 8-10 GB)
    python bench/retrieval.py --quick    # 100k exact, 200k ANN (2-3 min, peak RSS 5 GB)

The last line printed is one JSON object (keys: exact_qps_100k, torch_qps_100k, ann_recall5_1m, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rasr.retrieval import gallery as G
from rasr.retrieval.exact_search import Hit

DIM = 1280  # efficientnet-lite0 / b0 feature size
CENTRES = 4000
CATEGORIES = 20
K = 5


# ---- data ------------------------------------------------------------------------------------
class Mixture:
    """Seeded generator of clustered unit vectors; chunks are reproducible by (seed, start)."""

    def __init__(self, dim: int = DIM, centres: int = CENTRES, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        # Clusters of clusters (64 coarse groups), each cluster varying in its own 8-d subspace.
        coarse = _unit(rng.standard_normal((64, dim), dtype=np.float32))
        self.centres = _unit(coarse[rng.integers(64, size=centres)]
                             + 1.5 * rng.standard_normal((centres, dim), dtype=np.float32) / np.sqrt(dim))
        self.basis = rng.standard_normal((centres, 8, dim), dtype=np.float32) / np.sqrt(dim)

    def points(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows start..start+n: (unit vectors, cluster of each)."""
        rng = np.random.default_rng([self.seed, start])
        cl = rng.integers(len(self.centres), size=n)
        z = rng.standard_normal((n, 8), dtype=np.float32) * (0.6 / np.sqrt(8))
        x = self.centres[cl] + 0.15 * rng.standard_normal((n, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        order = np.argsort(cl, kind="stable")
        bounds = np.flatnonzero(np.diff(cl[order])) + 1
        for rows in np.split(order, bounds):  # one small matmul per cluster
            x[rows] += z[rows] @ self.basis[cl[rows[0]]]
        return _unit(x), cl

    def queries(self, n: int) -> np.ndarray:
        """Noisy copies of held-out points (drawn from a seed stream the table never uses)."""
        x, _ = self.points(10**12, n)
        rng = np.random.default_rng([self.seed, 1])
        return _unit(x + 0.1 * rng.standard_normal(x.shape, dtype=np.float32) / np.sqrt(self.dim))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_table(db_uri: str, mix: Mixture, rows: int, name: str = "bench") -> G.Gallery:
    """A gallery table of `rows` mixture points, written in 100k chunks (one chunk in memory at a time)."""
    g = G.Gallery.create_or_open(db_uri, name, "bench", mix.dim)
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        x, cl = mix.points(start, n)
        ids = [f"{start + i:064x}" for i in range(n)]
        t = pa.table({
            "id": ids, "uri": [f"mem://g/{i}.jpg" for i in ids], "relpath": [f"{i}.jpg" for i in ids],
            "category": [f"c{c % CATEGORIES}" for c in cl], "width": pa.array([64] * n, pa.int32()),
            "height": pa.array([64] * n, pa.int32()), "size": pa.array([1] * n, pa.int64()),
            "mtime": ["t"] * n, "encoder": ["bench"] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), mix.dim),
            "added_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")), "quality": [""] * n}, schema=g.table.schema)
        g.table.add(t)
    g._invalidate()
    return g


# ---- measuring -------------------------------------------------------------------------------
def log(msg: str) -> None:
    """Progress on stderr: stdout ends with the JSON line."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


TIME_SCALE = 1.0  # --smoke shortens every timed loop (the figures are then only a check that the code runs)


def rate(fn, queries: np.ndarray, batch: int, min_s: float = 1.5, max_calls: int = 10**9) -> float:
    """Queries per second calling fn(batch of queries) over `queries` until min_s has passed (after a warm-up)."""
    fn(queries[:batch])
    done, t0, calls = 0, time.perf_counter(), 0
    while (time.perf_counter() - t0 < min_s * TIME_SCALE or calls < 2) and calls < max_calls:
        s = (calls * batch) % (len(queries) - batch + 1)
        fn(queries[s:s + batch])
        done, calls = done + batch, calls + 1
    return done / (time.perf_counter() - t0)


def paired_rates(fa, fb, queries: np.ndarray, batch: int, min_s: float = 3.0) -> tuple[float, float]:
    """Queries per second of fa and fb, calls interleaved so that load from other processes hits both alike."""
    fa(queries[:batch]), fb(queries[:batch])
    ta = tb = 0.0
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s * TIME_SCALE or calls < 3:
        s = (calls * batch) % (len(queries) - batch + 1)
        x = queries[s:s + batch]
        t = time.perf_counter()
        fa(x)
        ta += time.perf_counter() - t
        t = time.perf_counter()
        fb(x)
        tb += time.perf_counter() - t
        calls += 1
    return calls * batch / ta, calls * batch / tb


def latencies_ms(fn, queries: np.ndarray) -> np.ndarray:
    fn(queries[:1])
    out = []
    for q in queries[:max(10, int(len(queries) * TIME_SCALE))]:
        t = time.perf_counter()
        fn(q[None])
        out.append((time.perf_counter() - t) * 1e3)
    return np.asarray(out)


def torch_topk(mat, k: int):
    """The plain baseline: one matmul and a topk, nothing else."""
    import torch

    def fn(q):
        return torch.topk(torch.from_numpy(q).to(mat.dtype) @ mat.T, k, dim=1)
    return fn


def old_gallery(db_uri: str, table: str, tmp: str):
    """The search code before this change (git HEAD:rasr/retrieval/gallery.py), forced onto its exact path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        src = subprocess.run(["git", "show", "HEAD:rasr/retrieval/gallery.py"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "_search_exact" not in src:  # HEAD already holds the new code
        return None
    path = os.path.join(tmp, "old_gallery.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("old_gallery", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_gallery"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    mod.ANN_MIN_ROWS = 1 << 62
    return mod.Gallery.open(db_uri, table)


def recall(hits: list[list[Hit]], truth: list[list[Hit]], k: int = K) -> float:
    return float(np.mean([len({h.id for h in a[:k]} & {h.id for h in b[:k]}) / k for a, b in zip(hits, truth)]))


# ---- sections --------------------------------------------------------------------------------
def exact_section(db: str, mix: Mixture, rows: int, out: dict, table: list) -> None:
    import torch

    log(f"exact section: {rows} rows")
    t = time.perf_counter()
    g = build_table(db, mix, rows, "exact")
    insert_s = time.perf_counter() - t
    q = mix.queries(1024)
    cats = [f"c{i % CATEGORIES}" for i in range(len(q))]
    r0 = rss_mb()
    t = time.perf_counter()
    e = g._load_exact()
    load_s = time.perf_counter() - t
    rss_delta = rss_mb() - r0
    tag = f"{rows // 1000}k"
    res = {}
    res["exact_qps"], res["torch_qps"] = paired_rates(lambda x: g.search(x, K), torch_topk(e.vecs, K), q, 256)
    res["exact_qps_single"], res["torch_qps_single"] = paired_rates(lambda x: g.search(x, K), torch_topk(e.vecs, K), q, 1)
    res.update({
        "exact_qps_cat": rate(lambda x: g.search(x, K, category=cats[:len(x)]), q, 256),
        "exact_qps_excl": rate(lambda x: g.search(x, K, exclude_ids=[{f"{i:064x}"} for i in range(len(x))]), q, 256),
    })
    res["torch_bf16_qps"] = rate(torch_topk(e.vecs.to(torch.bfloat16), K), q, 256)  # bf16 alone: not exact

    def fp32_only(x):  # the same index in float32 throughout: the exact path before the bf16 ranking
        e.LOW_PRECISION_MIN_ROWS = 1 << 62
        try:
            return g.search(x, K)
        finally:
            del e.LOW_PRECISION_MIN_ROWS
    res["exact_fp32_qps"], res["exact_bf16_qps"] = paired_rates(fp32_only, lambda x: g.search(x, K), q, 256)
    old = old_gallery(db, g.name, os.path.dirname(db))
    if old is not None:
        res["before_qps"] = rate(lambda x: old.search(x, K), q, 256, min_s=3, max_calls=4)
        res["before_qps_single"] = rate(lambda x: old.search(x, K), q, 1, min_s=3)
        res["before_qps_single_excl"] = rate(lambda x: old.search(x, K, exclude_ids=["0" * 64]), q, 1, min_s=3)
        del old
    res["exact_ratio"] = res["exact_qps"] / res["torch_qps"]
    res["bf16_fp32_ratio"] = res["exact_bf16_qps"] / res["exact_fp32_qps"]
    res["exact_ratio_single"] = res["exact_qps_single"] / res["torch_qps_single"]
    for key, v in res.items():
        out[f"{key}_{tag}"] = round(v, 3 if "ratio" in key else 1)
    out["mem_mb_per_100k"] = round(e.vecs.numel() * 4 / 2**20 / (rows / 100_000), 1)
    out["rss_mb_per_100k"] = round(rss_delta / (rows / 100_000), 1)
    out["load_s_100k"] = round(load_s / (rows / 100_000), 2)
    table += [("exact", tag, k, v) for k, v in res.items()]
    table += [("exact", tag, "insert_s", insert_s), ("exact", tag, "load_s", load_s),
              ("exact", tag, "matrix_mb", e.vecs.numel() * 4 / 2**20), ("exact", tag, "rss_delta_mb", rss_delta)]


def ann_section(db: str, mix: Mixture, rows: int, sizes: list[int], out: dict, table: list) -> None:
    """Build `rows` the production way (Gallery.maintain), sweep search settings, compare with exact."""
    log(f"ANN section: {rows} rows")
    t = time.perf_counter()
    g = build_table(db, mix, rows, "ann")
    table.append(("ann", _tag(rows), "insert_s", time.perf_counter() - t))
    q = mix.queries(300)
    keep = G.ANN_MIN_ROWS
    G.ANN_MIN_ROWS = min(keep, rows)
    t = time.perf_counter()
    info = g.maintain(compact=False)  # before the exact matrix is loaded: the build needs the room
    build_s = time.perf_counter() - t
    table.append(("ann", _tag(rows), f"index_build_s ({info['index']})", build_s))
    r0 = rss_mb()
    g.search(q[:1], K)
    table.append(("ann", _tag(rows), "rss_mb first search (id/uri/category copy)", rss_mb() - r0))
    e = g._load_exact()  # the reference for recall, and the exact side of the crossover
    truth = e.search(q, K, [set()] * len(q), [None] * len(q))
    # Crossover: exact at n rows against ANN at `rows`, calls interleaved so both see the same load.
    exact_batch, exact_single, cross_b, cross_s = {}, {}, [], []
    for n in sorted({s for s in sizes if s <= rows} | {rows}):
        log(f"crossover at {n} rows")
        sub = e.head(n)

        def exact(x, sub=sub):
            return sub.search(x, K, [set()] * len(x), [None] * len(x))
        eb, ab = paired_rates(exact, lambda x: g.search(x, K), q, 256)
        es, as_ = paired_rates(exact, lambda x: g.search(x, K), q, 1)
        exact_batch[n], exact_single[n] = eb, es
        cross_b.append(n * eb / ab)  # exact cost grows linearly with rows: where it meets ANN's
        cross_s.append(n * es / as_)
        table += [("crossover", _tag(n), "exact_qps / ann_qps (batch 256)", f"{eb:.1f} / {ab:.1f}"),
                  ("crossover", _tag(n), "exact_qps / ann_qps (single)", f"{es:.1f} / {as_:.1f}")]
    g._exact = g._matrix = e = sub = None  # the ANN path needs no matrix in memory
    log("ANN settings sweep")
    chosen = None
    defaults = (G.ANN_NPROBES, G.ANN_REFINE)
    for nprobes in (1, 2, 4, 8, 16):
        for refine in (2, 5, 10):
            G.ANN_NPROBES, G.ANN_REFINE = nprobes, refine
            rec = recall(g.search(q, K), truth)
            lat = latencies_ms(lambda x: g.search(x, K), q[:100])
            p50 = float(np.median(lat))
            table.append(("ann-sweep", _tag(rows), f"nprobes={nprobes} refine={refine}",
                          f"recall@5 {rec:.3f}  p50 {p50:.1f} ms  p95 {np.percentile(lat, 95):.1f} ms"))
            if rec >= 0.99 and chosen is None:  # cheapest first: fewest partitions, then fewest re-ranked
                chosen = (nprobes, refine, p50)
    G.ANN_NPROBES, G.ANN_REFINE = defaults  # the reported figures are for the gallery's own settings
    hits = g.search(q, K)
    lat = latencies_ms(lambda x: g.search(x, K), q)
    ann_batch = rate(lambda x: g.search(x, K), q, 256)
    cat_hits = g.search(q, K, category=[f"c{i % CATEGORIES}" for i in range(len(q))])
    G.ANN_MIN_ROWS = keep
    config = dict(index=info["index"], **G.ann_index_params(rows), nprobes=G.ANN_NPROBES, refine_factor=G.ANN_REFINE)
    tag = "1m" if rows == 1_000_000 else _tag(rows)
    out.update({f"ann_recall5_{tag}": round(recall(hits, truth), 4), f"ann_p50_ms_{tag}": round(float(np.median(lat)), 2),
                f"ann_p95_ms_{tag}": round(float(np.percentile(lat, 95)), 2), f"ann_qps_{tag}": round(ann_batch, 1),
                f"ann_build_s_{tag}": round(build_s, 1), "ann_rows": rows,
                "ann_config": config,
                "ann_cheapest_recall99": None if chosen is None else {"nprobes": chosen[0], "refine_factor": chosen[1]}})
    out["ann_cat_ok"] = all(h.category == f"c{i % CATEGORIES}" for i, hs in enumerate(cat_hits) for h in hs)
    table += [("ann", _tag(rows), "recall@5", out[f"ann_recall5_{tag}"]), ("ann", _tag(rows), "p50_ms", out[f"ann_p50_ms_{tag}"]),
              ("ann", _tag(rows), "p95_ms", out[f"ann_p95_ms_{tag}"]), ("ann", _tag(rows), "batched_qps", ann_batch)]
    out["crossover_rows_batched"] = int(np.median(cross_b))
    out["crossover_rows_single"] = int(np.median(cross_s))
    out["exact_qps_sizes"] = {_tag(n): round(v, 1) for n, v in exact_batch.items()}


def _tag(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def main(argv=None) -> dict:
    """Run the sections, print a table, and print the JSON summary as the last line."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k exact, 200k ANN (< 5 minutes)")
    ap.add_argument("--smoke", action="store_true", help="5k exact, 10k ANN: seconds (run by the test suite)")
    ap.add_argument("--exact-rows", type=int, default=100_000)
    ap.add_argument("--ann-rows", type=int, default=None, help="default 1M, 200k with --quick")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dir", default=None, help="where the LanceDB tables go (a temp dir, removed afterwards)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        global TIME_SCALE
        args.exact_rows, TIME_SCALE = 5_000, 0.02
    ann_rows = args.ann_rows or (10_000 if args.smoke else 200_000 if args.quick else 1_000_000)
    sizes = ([5_000, 10_000] if args.smoke else [100_000, 200_000] if args.quick
             else [100_000, 200_000, 500_000, 1_000_000])
    out = {"quick": args.quick, "threads": args.threads, "dim": DIM, "exact_rows": args.exact_rows}
    rows: list = []
    t0 = time.perf_counter()
    mix = Mixture()
    tmp = tempfile.mkdtemp(prefix="rasr-bench-", dir=args.dir)
    try:
        exact_section(os.path.join(tmp, "db"), mix, args.exact_rows, out, rows)
        ann_section(os.path.join(tmp, "db"), mix, ann_rows, sizes, out, rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tag = _tag(args.exact_rows)
    out["exact_qps_100k"], out["torch_qps_100k"] = out[f"exact_qps_{tag}"], out[f"torch_qps_{tag}"]
    out["exact_ratio_100k"] = out[f"exact_ratio_{tag}"]
    atag = "1m" if ann_rows == 1_000_000 else _tag(ann_rows)
    for key in ("recall5", "p50_ms", "p95_ms", "qps", "build_s"):
        out.setdefault(f"ann_{key}_1m", out[f"ann_{key}_{atag}"])  # measured at ann_rows (see that key)
    out["crossover_rows"] = out["crossover_rows_batched"]
    out["ann_min_rows"] = G.ANN_MIN_ROWS
    out["peak_rss_mb"] = round(_peak_rss_mb())
    out["total_s"] = round(time.perf_counter() - t0, 1)
    width = max(len(str(r[2])) for r in rows)
    for section, size, key, value in rows:
        v = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{section:10s} {size:>6s}  {key:<{width}s}  {v}")
    print(json.dumps(out))
    return out


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
