"""Flow `enhance_archive`: the main job.

list inputs -> drop what finished shards cover -> shard the rest -> per shard on Ray actors:
decode, embed, retrieve, restore, write images -> manifest Parquet -> done-marker last ->
run summary (Parquet + Prefect artifacts) -> results page (OUTPUT/report/index.html, linked from the
summary artifact; this run's inputs first, so a nightly run shows that night's new photos first).
A rerun with the same inputs and config loads no model and writes nothing; a crashed run resumes at
the first incomplete shard.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

from flows import _env  # noqa: F401  (telemetry off before Prefect loads)
from prefect import flow, get_run_logger

from flows._common import flow_setup, new_run_id, process_shards, publish_summary
from rasr import catalog, images, manifest, runlog, runreport, storage
from rasr.enhance import EnhanceConfig, check_inputs, plan
from tasks.actors import EnhanceActor

# inputs per actor call = this many model batches: enough for the worker's pipeline to fill and run
# steady (its drain at the end of a call overlaps the next call), small enough for timely progress
CALL_BATCHES = 8


@flow(name="enhance-archive")
def enhance_archive(input: str, output: str, db: str | None = None, table: str | None = None,
                    generator: str = "realesrgan", generator_weights: str | None = None,
                    generator_options: dict | None = None, top_k: int = 1, min_similarity: float = 0.0,
                    category_filter: bool = False, tile: int = 256, overlap: int = 32, color_fix: str = "none",
                    output_format: str = "png", png_level: int = images.DEFAULT_PNG_LEVEL,
                    quality: int = images.DEFAULT_QUALITY, max_pixels: int = images.DEFAULT_MAX_PIXELS, dtype: str = "fp32",
                    tagger: str = "category", encoder_weights: str | None = None, shard_size: int = 64,
                    batch_size: int = 4, workers: int | None = None, gpus_per_worker: float | None = None,
                    worker_resources: dict | None = None, ray_address: str | None = None,
                    max_inflight_shards: int | None = None, since: float | None = None,
                    follow_symlinks: bool = False, show_progress: bool = False) -> dict:
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
                        output_format=output_format, png_level=png_level, quality=quality, max_pixels=max_pixels,
                        dtype=dtype, tagger=tagger,
                        batch_size=batch_size)
    check_inputs(cfg, input, output, shard_size)
    cfg_hash = cfg.hash()
    work = plan(cfg, input, output, shard_size, since, follow_symlinks)
    items, shards, todo = work.items, work.shards, work.todo
    log.info(f"{len(items)} inputs, {len(items) - todo} already done, {todo} to enhance in {len(shards)} shards")

    results, failures, placement = process_shards(
        EnhanceActor, vars(cfg), shards, output, run_id, cfg_hash, {catalog.MANIFEST_DIR: manifest.SCHEMA},
        CALL_BATCHES * batch_size, "enhancing", show_progress, max_inflight=max_inflight_shards, workers=workers,
        gpus_per_worker=gpus_per_worker, resources=worker_resources, address=ray_address)

    counts = Counter()
    for r in results:
        counts.update({k: r[k] for k in manifest.STATUSES})
    summary = {
        "run_id": run_id, "input": storage.redact(input), "output": storage.redact(output),
        "generator": generator, "config_hash": cfg_hash, "listed": work.listed, "inputs": len(items),
        "already_done": len(items) - todo,
        "processed": sum(r["n"] for r in results), "ok": counts["ok"], "failed": counts["error"],
        "skipped": counts["skipped"], "shards": len(shards), "shards_failed": sum(not f.get("stopped") for f in failures),
        "retried_batches": sum(r["retried"] for r in results),
        "left_to_other_runs": sum(r["deferred"] for r in results),
        "done_by_other_runs": sum(r["done_elsewhere"] for r in results),
        "workers": len(placement), "nodes": len({p["node_id"] for p in placement}),
        "seconds": round(time.perf_counter() - t0, 2),
        "manifest": storage.redact(storage.join(output, catalog.MANIFEST_DIR)),
        "images": storage.redact(storage.join(output, catalog.IMAGES_DIR)),
    }
    errors = []
    try:
        if shards:  # a run that did nothing writes nothing (reruns change no file)
            rows = manifest.read_table(output, catalog.MANIFEST_DIR, manifest.SCHEMA,
                                       shard_ids=[r["shard_id"] for r in results if r["n"]]).to_pylist()
            errors = [{"uri": r["source_uri"], "error": r["error"]} for r in rows if r["status"] == "error"]
            runlog.write_run(output, {**summary, "started_at": started, "config": cfg.identity(),
                                      "shard_errors": [f["error"] for f in failures]})
            page = results_page(output, run_id)
            if page:
                summary["report"] = storage.redact(page)
            publish_summary("enhance-summary", summary, errors=errors, title=f"Enhance run {run_id}",
                            thumbnails=_thumbnails(rows), report=summary.get("report"))
        else:
            publish_summary("enhance-summary", summary, title=f"Enhance run {run_id}: nothing new")
    except Exception as e:  # after failed shards (e.g. the store went away) the shard error is the news
        if not failures:
            raise
        log.warning(f"run summary not written: {storage.redact(e)}")
    summary["errors"] = errors
    summary["placement"] = placement
    if failures:
        raise RuntimeError(f"{summary['shards_failed']} of {len(shards)} shards failed (their inputs will be retried "
                           f"by the next run): " + "; ".join(f["error"] for f in failures[:3]))
    return summary


def results_page(output: str, run_id: str) -> str | None:
    """Write or update OUTPUT/report/ with this run's rows first; returns its index.html, or None when it
    could not be written (a warning: the page is a view of finished work, never a reason to fail it)."""
    try:
        return runreport.write_report(output, first_run=run_id)["report"]
    except Exception as e:  # noqa: BLE001 - the page is a view of finished work, never a failure
        get_run_logger().warning(f"results page not written: {storage.redact(f'{e.__class__.__name__}: {e}')}")
        return None


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
