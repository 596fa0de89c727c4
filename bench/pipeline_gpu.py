"""GPU busy fraction of `rasr enhance` with full-size random-init osediff and refdsr (one GPU machine).

    python bench/pipeline_gpu.py [--images 320]     # refuses to run without CUDA; ~5 min on one H100

Each model runs through the whole command (Prefect + Ray actor + the overlapped worker, EfficientNet-Lite0
retrieval on the GPU, PNG level 1 writes) on 128 px crops of the bundled real photos -> 512 px, batch 8,
bf16. The generator is `RandomInit`, a bench-only wrapper that builds the full-size SD-2.1-base model with
random weights inside the actor (speed does not depend on weight values; bench/refdsr_gpu.py times the
bare model). Busy fraction = mean `nvidia-smi` utilization.gpu over the processing window (first to last
row written), and model time / window from the manifest's restore timings. Target: >= 0.8.
Last line: one JSON object (busy_osediff, busy_refdsr, model_fraction_osediff, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rasr.restoration.generators.base import Generator  # noqa: E402 - after the sys.path entry above


class RandomInit(Generator):
    """Bench only: full-size random-init osediff / refdsr (RASR_BENCH_MODEL), built on the worker's GPU."""

    def __init__(self, weights=None, device=None, dtype="bf16", **_):
        from bench.refdsr_gpu import build

        self.g = build(os.environ.get("RASR_BENCH_MODEL", "refdsr"), device or "cuda")
        for k in ("name", "scale", "uses_reference", "pad_multiple", "tiles_internally", "weights_id", "device",
                  "dtype", "tagger"):
            if hasattr(self.g, k):
                setattr(self, k, getattr(self.g, k))

    def restore(self, lr, ref, prompts=None):
        return self.g.restore(lr, ref, prompts)

    def info(self) -> dict:
        return self.g.info()


def run_model(model: str, inputs: str, db: str, out: str) -> dict:
    """`rasr enhance` for one model while nvidia-smi samples utilization every 100 ms."""
    import pyarrow.compute as pc

    from rasr.manifest import read_manifest

    env = {**os.environ, "RASR_BENCH_MODEL": model, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits",
                            "-lms", "100"], stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []

    def read():
        for line in smi.stdout:
            try:
                samples.append((time.time(), float(line.split(",")[1])))
            except (IndexError, ValueError):
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.perf_counter()
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rasr"), "enhance", inputs, out, "--db", db,
                        "--generator", "bench.pipeline_gpu:RandomInit", "--precision", "bf16", "--batch-size", "8",
                        "--tile", "0", "--shard-size", "128"], env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    smi.terminate()
    reader.join(timeout=2)
    if r.returncode != 0:
        raise RuntimeError(f"{model}: rasr enhance failed:\n{r.stderr[-3000:]}")
    rows = read_manifest(out)
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    ends = [t.timestamp() for t in ok["processed_at"].to_pylist()]
    restore_ms = sum(t["restore"] for t in ok["timings_ms"].to_pylist())
    start, end = min(ends), max(ends)
    window = [u for ts, u in samples if start <= ts <= end]
    return {"images": ok.num_rows, "wall_s": wall, "window_s": end - start,
            "busy": sum(window) / len(window) / 100 if window else float("nan"),
            "model_fraction": restore_ms / 1e3 / (end - start), "s_per_image": (end - start) / ok.num_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=320)
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench/pipeline_gpu.py needs a CUDA GPU; none found: run it on a GPU machine", file=sys.stderr)
        return 2
    from bench.pipeline import make_gallery, make_inputs

    work = tempfile.mkdtemp(prefix="rasr-gpu-bench-")
    db, inputs = os.path.join(work, "refs.lance"), os.path.join(work, "in")
    make_gallery(db)
    make_inputs(inputs, args.images)
    res = {"gpu": torch.cuda.get_device_name(), "images": args.images}
    for model in ("osediff", "refdsr"):
        r = run_model(model, inputs, db, os.path.join(work, f"out-{model}"))
        print(f"{model}: {r['images']} images, window {r['window_s']:.1f} s ({r['s_per_image']:.4f} s/image), "
              f"GPU busy {r['busy']:.3f}, model time / window {r['model_fraction']:.3f}, command {r['wall_s']:.1f} s",
              flush=True)
        res.update({f"busy_{model}": round(r["busy"], 3), f"model_fraction_{model}": round(r["model_fraction"], 3),
                    f"s_per_image_{model}": round(r["s_per_image"], 4)})
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
