"""Flows `evaluate` (methods x reference modes on an HR test set) and `score_folder` (`rasr metrics`).

evaluate: list HR set -> drop shards already done -> shards on Ray actors (degrade, retrieve, restore,
score) -> per-image Parquet (<out>/manifest), retrieval Parquet (<out>/retrieval) -> FID per method ->
summary Parquet, Table 1 / Table 5 Markdown, HTML report, Prefect artifacts. Resumable like enhance.
"""

from __future__ import annotations

import dataclasses
import time

import pyarrow as pa
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import catalog, runlog, storage
from rasr.research import evaluation_run
from rasr.results import evaluation_report
from rasr.research.evaluation import EVAL_SCHEMA, REF_MODES, RETRIEVAL_DIR, RETRIEVAL_SCHEMA, EvalConfig
from rasr.research.metrics import ScoreConfig
from tasks.actors import EvalActor
from tasks.cluster import Cluster
from tasks.shards import process_shards



@flow(name="evaluate")
def evaluate(hr: str, out: str, config: EvalConfig | None = None, cluster: Cluster | None = None,
             show_progress: bool = False) -> dict:
    """Evaluate `config.methods` on the HR test set `hr` into `out`; returns the summary and table texts."""
    cfg = config or EvalConfig()
    flow_setup(cfg, cluster)
    log = get_run_logger()
    t0 = time.perf_counter()
    run_id = runlog.new_run_id()
    for mode in cfg.ref_modes:
        if mode not in REF_MODES:
            raise ValueError(f"unknown reference mode {mode!r}: choose from {', '.join(REF_MODES)}")
    if "given" in cfg.ref_modes and not cfg.pairs_file:
        raise ValueError("reference mode 'given' needs --pairs CSV (columns image,ref)")
    items = [i for i in catalog.list_inputs(hr) if i.is_image]
    if not items:
        raise ValueError(f"no images under {storage.redact(hr)}")
    enc_status, extra_encoders, primary = evaluation_run.encoder_status(cfg.db, cfg.table, list(cfg.encoders))
    cfg = dataclasses.replace(cfg, encoders=extra_encoders,
                              pairs=evaluation_run.read_pairs(cfg.pairs_file, items) if cfg.pairs_file else {},
                              lr_files=evaluation_run.match_lr(cfg.lr_dir, items) if cfg.lr_dir else {})
    cfg_hash = cfg.hash()
    planned_at = time.time()
    done = catalog.covered(catalog.done_markers(out), cfg_hash)
    shards = catalog.plan(items, done, cfg_hash, cfg.shard_size)
    todo = sum(len(s.items) for s in shards)
    log.info(f"{len(items)} test images, {len(items) - todo} already evaluated, {todo} to go in {len(shards)} shards")
    schemas = {catalog.MANIFEST_DIR: EVAL_SCHEMA, RETRIEVAL_DIR: RETRIEVAL_SCHEMA}
    results, failures, _ = process_shards(
        EvalActor, vars(cfg), shards, out, run_id, cfg_hash, schemas, 1, "evaluating", show_progress, cluster,
        planned_at=planned_at)

    rows, summary, status, table1, table5 = evaluation_run.write_results(out, items, cfg, enc_status, primary)

    failed = rows[rows["status"] == "error"]
    info = {"run_id": run_id, "hr": storage.redact(hr), "out": storage.redact(out), "images": len(items),
            "already_done": len(items) - todo, "evaluated": sum(r["n"] for r in results),
            "failed_rows": len(failed), "shards_failed": len(failures), "seconds": round(time.perf_counter() - t0, 2),
            "report": storage.redact(storage.join(out, "report.html"))}
    if shards:
        runlog.write_run(out, {**info, "config": cfg.identity(), "shard_errors": [f["error"] for f in failures]})
    publish_summary("evaluate-summary", info, title=f"Evaluation {run_id}",
                    errors=[{"uri": r.relpath, "error": r.error} for r in failed.itertuples()])
    create_markdown_artifact(markdown=f"## Table 1\n\n{table1}\n" + (f"\n## Table 5\n\n{table5}\n" if table5 else ""),
                             key="evaluate-tables", description=f"Evaluation {run_id}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(shards)} shards failed (retried by the next run): "
                           + "; ".join(f["error"] for f in failures[:3]))
    return {**info, "table1": table1, "table5": table5, "summary": summary.to_dict("records"), "status": status,
            "encoder_status": enc_status}


@flow(name="score-folder")
def score_folder(pred: str, gt: str, out: str | None = None, config: ScoreConfig | None = None,
                 show_progress: bool = False) -> dict:
    """Score images produced by any tool against ground truth matched by file name (`rasr metrics`)."""
    from tqdm import tqdm

    cfg = config or ScoreConfig()
    flow_setup(cfg)
    names = list(cfg.metrics)
    pairs, unmatched = evaluation_run.pair_by_name(pred, gt)
    df, status = evaluation_run.score_pairs(pairs, names, cfg.crop_border,
                                      lambda it: tqdm(it, desc="scoring", unit="img", disable=not show_progress))
    means, summary = evaluation_run.score_summary(df, status, names, pred, gt)
    table = evaluation_report.table1_markdown(summary, {**status}, None)
    result = {"pairs": len(pairs), "unmatched": unmatched, "failed": int((df["status"] == "error").sum()),
              "means": means, "status": status, "table": table,
              "notes": [f"{r['image']}: {r['notes']}" for r in df.to_dict("records") if r.get("notes")]}
    if out:
        storage.write_parquet(storage.join(out, "metrics.parquet"), pa.Table.from_pandas(df, preserve_index=False))
        storage.write_parquet(storage.join(out, "summary.parquet"), pa.Table.from_pandas(summary, preserve_index=False))
        storage.write_bytes(storage.join(out, "metrics.md"), (table + "\n").encode())
    create_markdown_artifact(markdown=table, key="metrics-table", description=f"{pred} vs {gt}")
    return result
