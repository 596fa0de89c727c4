"""Flow `enhance_archive`: the main job.

list inputs -> drop what finished shards cover -> shard the rest -> per shard on Ray actors:
decode, embed, retrieve, restore, write images -> manifest Parquet -> done-marker last ->
run summary (Parquet + Prefect artifacts). A rerun with the same inputs and config loads no model
and writes nothing; a crashed run resumes at the first incomplete shard.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter

from flows import _env  # noqa: F401  (telemetry off before Prefect loads)
from prefect import flow, get_run_logger

from flows._common import flow_setup, new_run_id, publish_summary, run_bounded
from rasr import catalog, images, manifest, runlog, storage
from rasr.enhance import EnhanceConfig
from tasks import progress
from tasks.actors import EnhanceActor, actor_pool
from tasks.shards import run_shard


@flow(name="enhance-archive")
def enhance_archive(input: str, output: str, db: str | None = None, table: str | None = None,
                    generator: str = "realesrgan", generator_weights: str | None = None,
                    generator_options: dict | None = None, top_k: int = 1, min_similarity: float = 0.0,
                    category_filter: bool = False, tile: int = 256, overlap: int = 32, color_fix: str = "none",
                    output_format: str = "png", max_pixels: int = images.DEFAULT_MAX_PIXELS, dtype: str = "fp32",
                    tagger: str = "category", encoder_weights: str | None = None, shard_size: int = 64,
                    batch_size: int = 4, workers: int | None = None, gpus_per_worker: float | None = None,
                    worker_resources: dict | None = None, ray_address: str | None = None,
                    max_inflight_shards: int | None = None, since: float | None = None,
                    show_progress: bool = False) -> dict:
    """Enhance every new input under `input` into `output` (local folder or s3:// prefix).

    since: only inputs modified at or after this epoch time are considered (the nightly watermark)."""
    flow_setup()
    log = get_run_logger()
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id()
    cfg = EnhanceConfig(generator=generator, generator_weights=generator_weights,
                        generator_options=generator_options or {}, db=db, table=table,
                        encoder_weights=encoder_weights, top_k=top_k, min_similarity=min_similarity,
                        category_filter=category_filter, tile=tile, overlap=overlap, color_fix=color_fix,
                        output_format=output_format, max_pixels=max_pixels, dtype=dtype, tagger=tagger,
                        batch_size=batch_size)
    _check(cfg, input, output)
    cfg_hash = cfg.hash()
    items = catalog.list_inputs(input)
    listed = len(items)
    if since is not None:
        items = [i for i in items if (storage.mtime_seconds(i.mtime) or float("inf")) >= since]
    done = catalog.covered(catalog.done_markers(output), cfg_hash)
    shards = catalog.plan(items, done, cfg_hash, shard_size)
    todo = sum(len(s.items) for s in shards)
    log.info(f"{len(items)} inputs, {len(items) - todo} already done, {todo} to enhance in {len(shards)} shards")

    results, failures, placement = [], [], []
    if shards:
        key = f"enhance-{run_id}"
        progress.start(key, todo, "enhancing", show_progress)
        try:
            with actor_pool(EnhanceActor, vars(cfg), workers=workers, gpus_per_worker=gpus_per_worker,
                            resources=worker_resources, address=ray_address) as pool:
                placement = pool.placement
                limit = max_inflight_shards or pool.spec.workers + 1  # bounded: a crash loses little work
                submit = lambda sh: run_shard.submit(sh.to_dict(), output, run_id, cfg_hash, pool,  # noqa: E731
                                                     batch_size, {catalog.MANIFEST_DIR: manifest.SCHEMA}, key)
                results, failures = run_bounded(shards, submit, limit)
        finally:
            progress.close(key)

    counts = Counter()
    for r in results:
        counts.update({k: r[k] for k in manifest.STATUSES})
    summary = {
        "run_id": run_id, "input": storage.redact(input), "output": storage.redact(output),
        "generator": generator, "config_hash": cfg_hash, "listed": listed, "inputs": len(items),
        "already_done": len(items) - todo,
        "processed": sum(r["n"] for r in results), "ok": counts["ok"], "failed": counts["error"],
        "skipped": counts["skipped"], "shards": len(shards), "shards_failed": len(failures),
        "workers": len(placement), "nodes": len({p["node_id"] for p in placement}),
        "seconds": round(time.perf_counter() - t0, 2),
        "manifest": storage.redact(storage.join(output, catalog.MANIFEST_DIR)),
        "images": storage.redact(storage.join(output, catalog.IMAGES_DIR)),
    }
    errors = []
    if shards:  # a run that did nothing writes nothing (reruns change no file)
        rows = _this_run_rows(output, run_id)
        errors = [{"uri": r["source_uri"], "error": r["error"]} for r in rows if r["status"] == "error"]
        runlog.write_run(output, {**summary, "started_at": started, "config": cfg.identity(),
                                  "shard_errors": [f["error"] for f in failures]})
        publish_summary("enhance-summary", summary, errors=errors, title=f"Enhance run {run_id}",
                        thumbnails=_thumbnails(rows))
    else:
        publish_summary("enhance-summary", summary, title=f"Enhance run {run_id}: nothing new")
    summary["errors"] = errors
    summary["placement"] = placement
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(shards)} shards failed (their inputs will be retried "
                           f"by the next run): " + "; ".join(f["error"] for f in failures[:3]))
    return summary


def _check(cfg: EnhanceConfig, input: str, output: str) -> None:
    from rasr.colorfix import COLOR_FIXES
    from rasr.generators import GENERATORS

    if cfg.generator not in GENERATORS:
        raise ValueError(f"unknown generator {cfg.generator!r}: choose one of {', '.join(GENERATORS)}")
    if cfg.color_fix not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {cfg.color_fix!r}: choose one of {', '.join(COLOR_FIXES)}")
    if cfg.output_format not in images.OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {cfg.output_format!r}: choose one of {', '.join(images.OUTPUT_FORMATS)}")
    if cfg.generator == "refdsr" and not cfg.db:
        raise ValueError("generator 'refdsr' restores with references: pass --db GALLERY_DB (index one with `rasr index`)")
    if cfg.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {cfg.top_k}")
    norm = (lambda u: u.rstrip("/") + "/") if storage.is_remote(input) else (lambda u: os.path.abspath(u) + os.sep)
    if norm(output).startswith(norm(input)):
        raise ValueError(f"output {output} is inside input {input}: outputs would be re-read as inputs")


def _this_run_rows(output: str, run_id: str) -> list[dict]:
    table = manifest.read_manifest(output, latest=False)
    if table.num_rows == 0:
        return []
    import pyarrow.compute as pc

    return table.filter(pc.equal(table["run_id"], run_id)).to_pylist()


def _thumbnails(rows: list[dict], n: int = 4) -> list[tuple[str, bytes, bytes]]:
    out = []
    for r in rows:
        if r["status"] != "ok" or len(out) >= n:
            continue
        try:
            before = images.thumbnail_jpeg(images.load_rgb(storage.read_bytes(r["source_uri"])))
            after = images.thumbnail_jpeg(images.load_rgb(storage.read_bytes(r["output_uri"])))
            out.append((r["relpath"], before, after))
        except Exception:  # noqa: BLE001 - thumbnails are decoration, never a failure
            continue
    return out
