"""Flows `evaluate` (methods x reference modes on an HR test set) and `score_folder` (`rasr metrics`).

evaluate: list HR set -> drop shards already done -> shards on Ray actors (degrade, retrieve, restore,
score) -> per-image Parquet (<out>/manifest), retrieval Parquet (<out>/retrieval) -> FID per method ->
summary Parquet, Table 1 / Table 5 Markdown, HTML report, Prefect artifacts. Resumable like enhance.
"""

from __future__ import annotations

import time

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import catalog, runlog, storage
from rasr.research import evaluation_run, scoring
from rasr.research.evaluation import EVAL_SCHEMA, RETRIEVAL_DIR, RETRIEVAL_SCHEMA, EvalConfig
from rasr.research.metrics import ScoreConfig
from tasks.actors import EvalActor
from tasks.cluster import Cluster
from tasks.shards import process_shards


@flow(name="evaluate")
def evaluate(hr: str, out: str, config: EvalConfig | None = None, cluster: Cluster | None = None,
             show_progress: bool = False) -> dict:
    """Evaluate `config.methods` on the HR test set `hr` into `out`; returns the summary and table texts."""
    flow_setup(config, cluster)
    t0 = time.perf_counter()
    run_id = runlog.new_run_id()
    work = evaluation_run.plan(hr, out, config or EvalConfig())
    cfg, items, shards, todo = work.cfg, work.items, work.shards, work.todo
    get_run_logger().info(f"{len(items)} test images, {len(items) - todo} already evaluated, {todo} to go in "
                          f"{len(shards)} shards")
    schemas = {catalog.MANIFEST_DIR: EVAL_SCHEMA, RETRIEVAL_DIR: RETRIEVAL_SCHEMA}
    results, failures, _ = process_shards(
        EvalActor, vars(cfg), shards, out, run_id, cfg.hash(), schemas, 1, "evaluating", show_progress, cluster,
        planned_at=work.planned_at)

    rows, summary, status, table1, table5 = evaluation_run.write_results(out, items, cfg, work.enc_status, work.primary)

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
            "encoder_status": work.enc_status}


@flow(name="score-folder")
def score_folder(pred: str, gt: str, out: str | None = None, config: ScoreConfig | None = None,
                 show_progress: bool = False) -> dict:
    """Score images produced by any tool against ground truth matched by file name (`rasr metrics`)."""
    from tqdm import tqdm

    cfg = config or ScoreConfig()
    flow_setup(cfg)
    result = scoring.score_folder(pred, gt, out, cfg,
                                  lambda it: tqdm(it, desc="scoring", unit="img", disable=not show_progress))
    create_markdown_artifact(markdown=result["table"], key="metrics-table", description=f"{pred} vs {gt}")
    return result
