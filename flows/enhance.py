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

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import catalog, manifest, runlog, storage
from rasr.restoration import images
from rasr.results import results_page
from rasr.restoration.enhance_run import EnhanceConfig, check_inputs, output_for, plan, read_plan
from tasks.actors import EnhanceActor
from tasks.cluster import Cluster
from tasks.shards import process_shards

# inputs per actor call = this many model batches: enough for the worker's pipeline to fill and run
# steady (its drain at the end of a call overlaps the next call), small enough for timely progress
CALL_BATCHES = 8


@flow(name="enhance-archive")
def enhance_archive(input: str, output: str, config: EnhanceConfig | None = None, cluster: Cluster | None = None,
                    since: float | None = None, max_inflight_shards: int | None = None,
                    show_progress: bool = False, plan_uri: str | None = None) -> dict:
    """Enhance every new input under `input` into `output` (local folder or s3:// prefix).

    config: what to produce and how (rasr.restoration.enhance_run.EnhanceConfig); cluster: where the actors run.
    since: only inputs modified at or after this epoch time are considered (the nightly watermark).
    plan_uri: the plan this run already made (enhance_run.write_plan; the CLI's, which removes it), used instead of
    listing `input` and reading the run state again."""
    cfg = config or EnhanceConfig()
    flow_setup(cfg, cluster)
    log = get_run_logger()
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    run_id = runlog.new_run_id()
    output = output_for(cfg, input, output)  # OUTPUT, or OUTPUT/<input>-<hash> with nest_by_input
    check_inputs(cfg, input, output)
    cfg_hash = cfg.hash()
    work = (read_plan(plan_uri, cfg) if plan_uri and since is None else None) or plan(cfg, input, output, since)
    items, shards, todo = work.items, work.shards, work.todo
    log.info(f"{len(items)} inputs, {len(items) - todo} already done, {todo} to enhance in {len(shards)} shards")
    warnings = []
    if cfg.db and shards:
        from rasr.retrieval.gallery import empty_warning

        if warning := empty_warning(cfg.db, cfg.table):
            log.warning(warning)
            warnings.append(warning)

    results, failures, placement = process_shards(
        EnhanceActor, vars(cfg), shards, output, run_id, cfg_hash, {catalog.MANIFEST_DIR: manifest.SCHEMA},
        CALL_BATCHES * cfg.batch_size, "enhancing", show_progress, cluster, max_inflight=max_inflight_shards,
        planned_at=work.planned_at)

    counts = Counter()
    for r in results:
        counts.update({k: r[k] for k in manifest.STATUSES})
    summary = {
        "run_id": run_id, "input": storage.redact(input), "output": storage.redact(output),
        "generator": cfg.generator, "config_hash": cfg_hash, "listed": work.listed, "inputs": len(items),
        "already_done": len(items) - todo,
        "processed": sum(r["n"] for r in results), "ok": counts["ok"], "failed": counts["error"],
        "skipped": counts["skipped"], "shards": len(shards), "shards_failed": sum(not f.get("stopped") for f in failures),
        "retried_batches": sum(r["retried"] for r in results),
        "left_to_other_runs": sum(r["deferred"] for r in results),
        "done_by_other_runs": sum(r["done_elsewhere"] for r in results),
        "workers": len(placement), "nodes": len({p["node_id"] for p in placement}),
        "seconds": round(time.perf_counter() - t0, 2),
        "manifest": storage.redact(storage.join(output, catalog.MANIFEST_DIR)), "warnings": warnings,
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
            compact_state(output, run_id)
            page = append_results_page(output, run_id, rows)
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


def compact_state(output: str, run_id: str) -> None:
    """Roll the done-markers older than a day into the run state (rasr/runstate.py); a warning on failure (the
    markers stay valid as they are)."""
    from rasr import runstate

    try:
        done = runstate.compact(output, run_id)
        if done.get("markers_rolled") or done.get("rollups_merged"):
            get_run_logger().info(f"run state compacted: {done}")
    except Exception as e:  # noqa: BLE001 - compaction saves later reads; it never fails a run
        get_run_logger().warning(f"run state not compacted: {storage.redact(f'{e.__class__.__name__}: {e}')}")


def append_results_page(output: str, run_id: str, rows: list[dict]) -> str | None:
    """Add this run's rows to OUTPUT/report/, shown first; returns its index.html, or None when it could not be
    written (a warning: the page is a view of finished work, never a reason to fail it)."""
    try:
        return results_page.append_run(output, run_id, rows)["report"]
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
