"""A 1,000-image evaluation (bicubic + realesrgan) on CPU: sharded, killed mid-way, resumed; memory sampled.

    .venv/bin/python bench/eval_scale.py [--images 1000] [--out DIR]      # ~10 min on 2 CPU cores
    .venv/bin/python bench/eval_scale.py --smoke   # 4 images, one run of the same command in this process (tests)

Prints: shards done at the kill, the resumed run's summary, rows per (method, image) (must be exactly
one), and the resident memory of the whole process tree (driver + Ray workers) sampled through both
runs: "flat" means the late samples are not above the early ones by more than noise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
from PIL import Image

from rasr import catalog, manifest, samples
from rasr.research.evaluation import EVAL_SCHEMA


def make_test_set(root: str, n: int, size: int = 96) -> None:
    """n HR crops of the bundled real photos (several crops per photo), in category folders."""
    names = samples.photo_names()
    rng = np.random.default_rng(0)
    for i in range(n):
        name = names[i % len(names)]
        img = samples.as_rgb(samples.load_photo(name))
        y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        folder = os.path.join(root, samples.category_of(name))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img[y:y + size, x:x + size]).save(os.path.join(folder, f"{name}_{i:04d}.png"))


def tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0


def run(cmd: list[str], kill_after_shards: int | None, done_dir: str, samples_out: list) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            done = len(os.listdir(done_dir)) if os.path.isdir(done_dir) else 0
            samples_out.append((time.time(), done, tree_rss(proc.pid)))
            if kill_after_shards is not None and done >= kill_after_shards:
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(1.0)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    stop.set()
    t.join()
    if kill_after_shards is None:
        print(out[-3000:])
    return proc.returncode


def rows_per_pair(out: str) -> dict:
    rows = manifest.read_table(out, catalog.MANIFEST_DIR, EVAL_SCHEMA).to_pandas()
    per = rows.groupby(["relpath", "method"]).size()
    print(f"rows {len(rows)}, images {rows['relpath'].nunique()}, rows per (image, method): min {per.min()} max {per.max()}")
    return {"rows": len(rows), "images": int(rows["relpath"].nunique()), "per_pair_min": int(per.min()),
            "per_pair_max": int(per.max())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.shard_size = 4, 2
    root = args.out or tempfile.mkdtemp(prefix="rasr-scale-")
    hr, out = os.path.join(root, "hr"), os.path.join(root, "eval")
    if not os.path.isdir(hr):
        make_test_set(hr, args.images, size=48 if args.smoke else 96)
    cli = ["evaluate", hr, out, "--methods", "bicubic,realesrgan", "--metrics",
           "psnr,ssim" if args.smoke else "psnr,ssim,niqe", "--shard-size", str(args.shard_size), "--examples", "2"]
    if args.smoke:  # the same command, in this process (no kill: the resume is what the full run measures)
        from flows.cli import main as rasr

        try:
            rasr(cli, standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
        return rows_per_pair(out)
    cmd = [sys.executable, "-m", "flows.cli", *cli]
    done_dir = os.path.join(out, catalog.DONE_DIR)
    n_shards = -(-args.images // args.shard_size)
    mem: list = []
    t0 = time.time()
    rc1 = run(cmd, n_shards // 2, done_dir, mem)
    killed_at = len(os.listdir(done_dir))
    print(f"first run killed (rc {rc1}) after {killed_at}/{n_shards} shards, {time.time() - t0:.0f} s")
    split = len(mem)
    rc2 = run(cmd, None, done_dir, mem)
    print(f"resumed run rc {rc2}; total {time.time() - t0:.0f} s")
    result = rows_per_pair(out)
    for label, part in (("killed run", mem[:split]), ("resumed run", mem[split:])):
        rss = np.array([m[2] for m in part if m[2] > 0]) / 2**20
        q = max(1, len(rss) // 4)
        print(f"{label}: process-tree RSS MiB first quarter median {np.median(rss[:q]):.0f}, last quarter "
              f"median {np.median(rss[-q:]):.0f}, max {rss.max():.0f} ({len(rss)} samples, 1 s apart)")
    return result


if __name__ == "__main__":
    main()
