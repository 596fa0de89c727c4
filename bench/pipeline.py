"""How busy the pipeline keeps the model: efficiency = model time / wall time.

The model is `SleepGenerator`, a bench-only generator that waits N ms per image outside the GIL
(as a GPU call does) and upsamples by nearest neighbour; everything around it is the real pipeline:
read, sha256, decode, EfficientNet-Lite0 embedding + gallery retrieval, restore, PNG encode, write.
Inputs: 128 px crops of the bundled real photos (scikit-image, scikit-learn), seeded -> 512 px outputs.

  per worker   EnhanceWorker driven like its Ray actor (calls of 8 batches, two at a time), for
               N = 10..200 ms; and the old serial worker (overlap=False, one call at a time) beside it
  end to end   `rasr enhance` as a subprocess (Prefect + Ray + actors) on 500 and on 2,000 images
               (after a 16-image warm-up run that creates Prefect's database): efficiency of the
               extra 1,500 images (startup cancels out), peak RSS of the process
               tree (driver + Ray) sampled every 0.2 s
  realesrgan   the real generator on CPU, same measure (model time = time inside restore)

    .venv/bin/python bench/pipeline.py [--quick]

The last line is one JSON object: efficiency_30ms, efficiency_100ms, e2e_efficiency, rss_ratio_2000_500, ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from rasr.restoration.generators.base import Generator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SleepGenerator(Generator):
    """Bench only: waits RASR_BENCH_MS (or ms=) per image with the GIL released, like a GPU call."""

    name = "sleep"
    scale = 4
    busy_s = 0.0  # total simulated model time in this process

    def __init__(self, weights=None, device=None, dtype="fp32", ms: float | None = None, **_):
        self.ms = float(ms if ms is not None else os.environ.get("RASR_BENCH_MS", "30"))
        self.weights_id = f"sleep-{self.ms:g}ms"

    def restore(self, lr, ref, prompts=None):
        wait = self.ms / 1e3 * lr.shape[0]
        time.sleep(wait)
        SleepGenerator.busy_s += wait
        return F.interpolate(lr, scale_factor=self.scale, mode="nearest")


# ---- data -----------------------------------------------------------------------------------------

def make_inputs(folder: str, n: int, seed: int = 0, side: int = 128) -> None:
    """n seeded side x side crops of the bundled real photos, as PNG files in sub-folders by photo."""
    import numpy as np
    from PIL import Image

    from rasr import samples

    rng = np.random.default_rng(seed)
    photos = {p: samples.as_rgb(samples.load_photo(p)) for p in samples.photo_names()}
    names = [p for p, img in photos.items() if min(img.shape[:2]) > side]
    for i in range(n):
        name = names[i % len(names)]
        img = photos[name]
        y, x = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        Image.fromarray(img[y:y + side, x:x + side]).save(os.path.join(folder, name, f"{i:05d}.png"), compress_level=1)


def make_gallery(db: str) -> None:
    """The bundled photos (whole, by category) indexed with the library's own code, no engines."""
    from rasr import catalog, samples
    from rasr.retrieval.encoders import load_encoder
    from rasr.retrieval.gallery import Gallery
    from rasr.retrieval.embedding import Embedder

    src = os.path.join(os.path.dirname(db), "gallery-src")
    samples.write_sample(os.path.dirname(src) + "/sample")
    items = catalog.list_inputs(os.path.dirname(src) + "/sample/gallery")
    enc = load_encoder("efficientnet-lite0")
    rows, _ = Embedder(enc).embed(items)
    Gallery.create_or_open(db, "gallery", enc.id, enc.dim).upsert(rows)


# ---- per worker -----------------------------------------------------------------------------------

def per_worker(inputs: str, db: str, out: str, ms: float, overlap: bool, generator: str | None = None,
               limit: int | None = None) -> dict:
    """Run one EnhanceWorker over every input the way its actor is driven; efficiency and stage means."""
    from flows.enhance import CALL_BATCHES
    from rasr import catalog
    from rasr.restoration.worker import EnhanceWorker
    from rasr.restoration.enhance_run import EnhanceConfig

    items = [i for i in catalog.list_inputs(inputs)][:limit]
    cfg = EnhanceConfig(generator=generator or f"{__name__}:SleepGenerator", generator_options={} if generator else {"ms": ms},
                        db=db, batch_size=4, tile=0)
    worker = EnhanceWorker(cfg, overlap=overlap)
    busy = _busy_clock(worker)
    per_call = CALL_BATCHES * cfg.batch_size
    calls = [items[i:i + per_call] for i in range(0, len(items), per_call)]
    t0 = time.perf_counter()
    if overlap:  # the actor runs two calls at once (max_concurrency=2)
        with ThreadPoolExecutor(2) as pool:
            rows = [r for rs in pool.map(lambda c: worker.process(c, out, "s", "r"), calls) for r in rs]
    else:        # before: one call at a time, every stage serial
        rows = [r for c in calls for r in worker.process(c, out, "s", "r")]
    wall = time.perf_counter() - t0
    worker.close()
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"][:3]
    stages = {k: sum(r["timings_ms"][k] for r in rows) / len(rows) for k in ("decode", "embed", "restore", "encode")}
    return {"images": len(rows), "wall_s": wall, "model_s": busy(), "efficiency": busy() / wall,
            "ms_per_image": wall / len(rows) * 1e3, **{f"{k}_ms": v for k, v in stages.items()}}


def _busy_clock(worker):
    """Time spent inside the generator's restore (for SleepGenerator: exactly the simulated waits)."""
    g = worker.generator
    spent = [0.0]
    inner = g.restore

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    g.restore = timed
    return lambda: spent[0]


# ---- end to end -----------------------------------------------------------------------------------

def end_to_end(inputs: str, db: str, out: str, ms: float) -> dict:
    """`rasr enhance` in a subprocess; wall time and peak RSS of its whole process tree."""
    import psutil

    env = {**os.environ, "RASR_BENCH_MS": str(ms), "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PREFECT_HOME": os.path.join(os.path.dirname(out), "prefect")}
    cmd = [os.path.join(os.path.dirname(sys.executable), "rasr"), "enhance", inputs, out, "--db", db,
           "--generator", f"{__name__ if __name__ != '__main__' else 'bench.pipeline'}:SleepGenerator",
           "--tile", "0", "--shard-size", "250"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    peak, stop = [0], threading.Event()

    def sample():
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                tree = [p] + p.children(recursive=True)
                peak[0] = max(peak[0], sum(_rss(q) for q in tree))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"rasr enhance failed ({proc.returncode}):\n{output[-3000:]}")
    n = sum(1 for _, _, files in os.walk(os.path.join(out, "images")) for _ in files)
    return {"images": n, "wall_s": wall, "peak_rss_mib": peak[0] / 2**20}


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except Exception:  # noqa: BLE001 - a process that just exited
        return 0


# ---- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer points and images (same keys), < 5 minutes")
    ap.add_argument("--smoke", action="store_true", help="the per-worker section on 8 images, no realesrgan or "
                                                          "`rasr enhance` runs: seconds (tests/test_benches.py)")
    ap.add_argument("--keep", default=None, help="keep the data in this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    curve = (30,) if args.smoke else (30, 100) if args.quick else (10, 30, 50, 100, 200)
    n_worker, n_small, n_large = (8, 8, 8) if args.smoke else (200, 200, 500) if args.quick else (500, 500, 2000)
    work = args.keep or tempfile.mkdtemp(prefix="rasr-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        res = run(work, curve, n_worker, n_small, n_large, quick=args.quick or args.smoke, smoke=args.smoke)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))
    return res


def run(work: str, curve, n_worker: int, n_small: int, n_large: int, quick: bool, smoke: bool = False) -> dict:
    t_start = time.perf_counter()
    db = os.path.join(work, "refs.lance")
    make_gallery(db)
    small, large = os.path.join(work, f"in{n_small}"), os.path.join(work, f"in{n_large}")
    make_inputs(small, n_small)
    make_inputs(large, n_large)
    cpu = os.cpu_count()
    print(f"machine: {cpu} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(f"\nper worker, {n_worker} images 128 -> 512 px, retrieval on (EfficientNet-Lite0 on CPU), PNG level 1:")
    print(f"{'model ms/img':>12} {'mode':>9} {'ms/img':>8} {'efficiency':>10}  stage means ms: decode embed restore encode")
    res: dict = {"cpus": cpu, "images_per_worker": n_worker}
    for ms in curve:
        for overlap in ((False, True) if ms in (30, 100) else (True,)):
            r = per_worker(small, db, os.path.join(work, f"w{ms}{overlap}"), ms, overlap, limit=n_worker)
            mode = "pipeline" if overlap else "serial"
            print(f"{ms:>12} {mode:>9} {r['ms_per_image']:>8.1f} {r['efficiency']:>10.3f}  "
                  f"{r['decode_ms']:.1f} {r['embed_ms']:.1f} {r['restore_ms']:.1f} {r['encode_ms']:.1f}")
            res[f"{'efficiency' if overlap else 'serial_efficiency'}_{ms}ms"] = round(r["efficiency"], 3)
    if smoke:
        return res
    n_esr = 4 if quick else 16  # ~5 s per image on 2 CPU cores
    print(f"\nrealesrgan on CPU ({n_esr} images, {torch.get_num_threads()} threads), model = time inside restore:")
    for overlap in (False, True):
        r = per_worker(small, db, os.path.join(work, f"esr{overlap}"), 0, overlap, generator="realesrgan", limit=n_esr)
        print(f"{'pipeline' if overlap else 'serial':>9} {r['ms_per_image']:>8.1f} ms/img  efficiency {r['efficiency']:.3f}")
        res[f"realesrgan_cpu_{'efficiency' if overlap else 'serial_efficiency'}"] = round(r["efficiency"], 3)

    ms = 30
    print(f"\nend to end: `rasr enhance` (Prefect + Ray, 1 actor), model {ms} ms/image:")
    warm = os.path.join(work, "in-warm")
    make_inputs(warm, 16, seed=1)
    end_to_end(warm, db, os.path.join(work, "e2e-warm"), ms)  # Prefect's database is created by the first run
    a = end_to_end(small, db, os.path.join(work, "e2e-a"), ms)
    b = end_to_end(large, db, os.path.join(work, "e2e-b"), ms)
    assert a["images"] == n_small and b["images"] == n_large, (a, b)
    marginal = ms / 1e3 * (n_large - n_small) / (b["wall_s"] - a["wall_s"])
    for r in (a, b):
        print(f"  {r['images']:>5} images: wall {r['wall_s']:.1f} s (whole command: efficiency "
              f"{ms / 1e3 * r['images'] / r['wall_s']:.3f}), peak RSS of the process tree {r['peak_rss_mib']:.0f} MiB")
    print(f"  the extra {n_large - n_small} images: efficiency {marginal:.3f} "
          f"(per worker at {ms} ms: {res[f'efficiency_{ms}ms']:.3f})")
    res.update(e2e_efficiency=round(marginal, 3), e2e_ms=ms, e2e_images=[n_small, n_large],
               e2e_wall_s=[round(a["wall_s"], 1), round(b["wall_s"], 1)],
               e2e_vs_worker=round(marginal / res[f"efficiency_{ms}ms"], 3),
               rss_mib=[round(a["peak_rss_mib"]), round(b["peak_rss_mib"])],
               rss_ratio_2000_500=round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
               bench_seconds=round(time.perf_counter() - t_start))
    if quick:
        res["rss_ratio_note"] = f"quick: {n_large} vs {n_small} images"
    return res


if __name__ == "__main__":
    main()
