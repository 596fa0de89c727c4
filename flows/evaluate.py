"""Flows `evaluate` (methods x reference modes on an HR test set) and `score_folder` (`rasr metrics`).

evaluate: list HR set -> drop shards already done -> shards on Ray actors (degrade, retrieve, restore,
score) -> per-image Parquet (<out>/manifest), retrieval Parquet (<out>/retrieval) -> FID per method ->
summary Parquet, Table 1 / Table 5 Markdown, HTML report, Prefect artifacts. Resumable like enhance.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time

from flows import _env  # noqa: F401  (telemetry off before Prefect loads)
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows._common import flow_setup, new_run_id, process_shards, publish_summary
from rasr import catalog, images, manifest, metrics, report, runlog, storage
from rasr.evaluate import EVAL_SCHEMA, REF_MODES, RETRIEVAL_DIR, RETRIEVAL_SCHEMA, EvalConfig
from tasks.actors import EvalActor

TABLE5_ENCODERS = ("vgg16", "clip", "dinov2", "efficientnet-lite0")


def _stem(relpath: str) -> str:
    return os.path.splitext(relpath)[0]


def read_pairs(path: str, items: list[catalog.Item]) -> dict[str, str]:
    """`given` references: a CSV with columns image (relative path or file name in the test set) and
    ref (a path or URI; relative paths are taken from the CSV's folder)."""
    text = storage.read_bytes(path).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"image", "ref"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV header with columns image,ref")
    by_name = {}
    for it in items:
        by_name.setdefault(it.relpath, it.relpath)
        by_name.setdefault(os.path.basename(it.relpath), it.relpath)
        by_name.setdefault(_stem(it.relpath), it.relpath)
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    pairs = {}
    for r in rows:
        key = by_name.get(r["image"]) or by_name.get(_stem(r["image"]))
        if key is None:
            raise ValueError(f"{path}: image {r['image']!r} is not in the test set")
        ref = r["ref"]
        pairs[key] = ref if ("://" in ref or os.path.isabs(ref)) else storage.join(base, ref)
    return pairs


def match_lr(lr_dir: str, items: list[catalog.Item]) -> dict[str, str]:
    """Existing LR files matched to HR files by relative path without extension."""
    lrs = {_stem(i.relpath): i.uri for i in catalog.list_inputs(lr_dir) if i.is_image}
    found = {it.relpath: lrs[_stem(it.relpath)] for it in items if _stem(it.relpath) in lrs}
    if not found:
        raise ValueError(f"no LR file in {lr_dir} matches an HR file by relative path (without extension)")
    return found


def _fid_per_run(rows: pd.DataFrame, out: str) -> dict[tuple[str, str], float | None]:
    if metrics.check("fid") != metrics.OK:
        return {}
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir = os.path.join(tmp, "gt")
        ok = rows[rows["status"] == "ok"]
        for uri in ok.drop_duplicates("relpath")["gt_uri"].dropna():
            _copy(uri, gt_dir)
        for (method, mode), g in ok.groupby(["method", "ref_mode"]):
            d = os.path.join(tmp, f"{method}-{mode}".replace(":", "-"))
            for uri in g["sr_uri"].dropna():
                _copy(uri, d)
            result[(method, mode)] = metrics.fid(d, gt_dir)
    return result


def _copy(uri: str, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    name = uri.replace("/", "_").replace(":", "_")[-150:]
    with open(os.path.join(folder, name), "wb") as f:
        f.write(storage.read_bytes(uri))


def _encoder_status(db: str | None, table: str | None, encoders: list[str]) -> tuple[dict[str, str], list[str], str | None]:
    """Which Table 5 encoders can run: their weights load and the DB has their gallery table."""
    from rasr.encoders import load_encoder
    from rasr.gallery import Gallery, list_tables

    if not db:
        return {e: "unavailable: no gallery (--db)" for e in ("random", *TABLE5_ENCODERS)}, [], None
    primary = Gallery.open(db, table)
    base = primary.name.rsplit("__", 1)[0]
    names = list_tables(db)
    status = {"random": "ok", primary.encoder: "ok"}
    usable = []
    for enc in encoders:
        if enc == primary.encoder:
            continue
        try:
            load_encoder(enc, device="cpu")
        except Exception as e:  # noqa: BLE001 - missing weights: reported in Table 5
            status[enc] = f"unavailable: {str(e).splitlines()[0]}"
            continue
        if f"{base}__{enc.replace('-', '_')}" not in names:
            status[enc] = f"unavailable: no table {base}__{enc.replace('-', '_')}: run `rasr index GALLERY --db {db} --encoder {enc}`"
            continue
        status[enc] = "ok"
        usable.append(enc)
    for enc in TABLE5_ENCODERS:
        status.setdefault(enc, "not requested")
    return status, usable, primary.encoder


@flow(name="evaluate")
def evaluate(hr: str, out: str, methods: list[str] = ("bicubic", "realesrgan"), ref_modes: list[str] = ("retrieved",),
             db: str | None = None, table: str | None = None, lr_dir: str | None = None, pairs: str | None = None,
             encoders: list[str] = (), table5_method: str | None = None, baseline: str | None = "bicubic",
             seed: int = 0, crop: int = 0, metric_names: list[str] = tuple(metrics.METRICS), crop_border: int = 0,
             weights: dict | None = None, generator_options: dict | None = None, tile: int = 256,
             color_fix: str = "none", dtype: str = "fp32", shard_size: int = 32, workers: int | None = None,
             gpus_per_worker: float | None = None, worker_resources: dict | None = None,
             ray_address: str | None = None, report_examples: int = 3, show_progress: bool = False) -> dict:
    """Evaluate `methods` on the HR test set `hr` into `out`; returns the summary and table texts."""
    flow_setup()
    log = get_run_logger()
    t0 = time.perf_counter()
    run_id = new_run_id()
    for mode in ref_modes:
        if mode not in REF_MODES:
            raise ValueError(f"unknown reference mode {mode!r}: choose from {', '.join(REF_MODES)}")
    items = [i for i in catalog.list_inputs(hr) if i.is_image]
    if not items:
        raise ValueError(f"no images under {storage.redact(hr)}")
    enc_status, extra_encoders, primary = _encoder_status(db, table, list(encoders))
    cfg = EvalConfig(methods=list(methods), ref_modes=list(ref_modes), db=db, table=table,
                     encoders=extra_encoders, table5_method=table5_method,
                     pairs=read_pairs(pairs, items) if pairs else {},
                     lr_files=match_lr(lr_dir, items) if lr_dir else {}, seed=seed, crop=crop,
                     metrics=list(metric_names), crop_border=crop_border, weights=weights or {},
                     generator_options=generator_options or {}, tile=tile, color_fix=color_fix, dtype=dtype)
    if "given" in ref_modes and not pairs:
        raise ValueError("reference mode 'given' needs --pairs CSV (columns image,ref)")
    cfg_hash = cfg.hash()
    done = catalog.covered(catalog.done_markers(out), cfg_hash)
    shards = catalog.plan(items, done, cfg_hash, shard_size)
    todo = sum(len(s.items) for s in shards)
    log.info(f"{len(items)} test images, {len(items) - todo} already evaluated, {todo} to go in {len(shards)} shards")
    schemas = {catalog.MANIFEST_DIR: EVAL_SCHEMA, RETRIEVAL_DIR: RETRIEVAL_SCHEMA}
    results, failures, _ = process_shards(
        EvalActor, vars(cfg), shards, out, run_id, cfg_hash, schemas, 1, "evaluating", show_progress,
        workers=workers, gpus_per_worker=gpus_per_worker, resources=worker_resources, address=ray_address)

    # summaries over everything evaluated under this config (this run and earlier, resumed ones)
    rows = manifest.read_table(out, catalog.MANIFEST_DIR, EVAL_SCHEMA).to_pandas()
    rows = rows[rows["relpath"].isin({i.relpath for i in items})]
    retrieval = manifest.read_table(out, RETRIEVAL_DIR, RETRIEVAL_SCHEMA).to_pandas()
    status = {**metrics.status(list(metric_names)), "fid": metrics.check("fid")}
    summary = report.summarize(rows, _fid_per_run(rows, out))
    table1 = report.table1_markdown(summary, status, baseline)
    table5 = report.table5_markdown(retrieval, summary, enc_status, table5_method, primary) if db else None
    html = report.html_report(rows, table1, table5, status, n_examples=report_examples)
    storage.write_bytes(storage.join(out, "report.html"), html.encode())
    storage.write_bytes(storage.join(out, "table1.md"), (table1 + "\n").encode())
    if table5:
        storage.write_bytes(storage.join(out, "table5.md"), (table5 + "\n").encode())
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(summary, preserve_index=False), buf)
    storage.write_bytes(storage.join(out, "summary.parquet"), buf.getvalue())

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
def score_folder(pred: str, gt: str, out: str | None = None, metric_names: list[str] = tuple(metrics.METRICS),
                 crop_border: int = 0, show_progress: bool = False) -> dict:
    """Score images produced by any tool against ground truth matched by file name (`rasr metrics`)."""
    from tqdm import tqdm

    preds = {_stem(i.relpath): i for i in catalog.list_inputs(pred) if i.is_image}
    gts = {_stem(i.relpath): i for i in catalog.list_inputs(gt) if i.is_image}
    if not gts:
        raise ValueError(f"no images under {storage.redact(gt)}")
    by_base = {os.path.basename(k): k for k in gts}
    pairs, unmatched = [], []
    for key, item in preds.items():
        g = gts.get(key) or gts.get(by_base.get(os.path.basename(key), ""))
        (pairs.append((item, g)) if g else unmatched.append(item.relpath))
    if not pairs:
        raise ValueError(f"no file in {storage.redact(pred)} matches a file in {storage.redact(gt)} by name")
    suite = metrics.MetricSuite(list(metric_names), crop_border=crop_border)
    small = metrics.MetricSuite([m for m in metric_names if m != "niqe"], crop_border=crop_border)
    rows = []
    for p, g in tqdm(pairs, desc="scoring", unit="img", disable=not show_progress):
        row = {"image": p.relpath, "pred_uri": p.uri, "gt_uri": g.uri, "status": "ok", "error": None}
        try:
            x = images.load_rgb(storage.read_bytes(p.uri))
            y = images.load_rgb(storage.read_bytes(g.uri))
            s = suite if min(x.shape[:2]) >= metrics.NIQE_MIN_SIZE else small
            row.update({m: None for m in metric_names})
            row.update(s.score(x, y))
        except Exception as e:  # noqa: BLE001 - one bad pair is a row with the reason
            row.update(status="error", error=storage.redact(str(e)))
        rows.append(row)
    df = pd.DataFrame(rows)
    status = {**{m: suite.status[m] for m in metric_names}}
    if "fid" not in status:
        status["fid"] = metrics.check("fid")
    fid_value = None
    if status["fid"] == metrics.OK and not storage.is_remote(pred) and not storage.is_remote(gt):
        fid_value = metrics.fid(pred, gt)
    means = {m: (None if status[m] != metrics.OK or m not in df or df[m].isna().all() else float(df[m].mean()))
             for m in list(metric_names)}
    means["fid"] = fid_value
    summary = pd.DataFrame([{"method": "pred", "ref_mode": "none", "images": int((df["status"] == "ok").sum()),
                             **means}])
    table = report.table1_markdown(summary, {**status}, None)
    result = {"pairs": len(pairs), "unmatched": unmatched, "failed": int((df["status"] == "error").sum()),
              "means": means, "status": status, "table": table}
    if out:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
        storage.write_bytes(storage.join(out, "metrics.parquet"), buf.getvalue())
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(summary, preserve_index=False), buf)
        storage.write_bytes(storage.join(out, "summary.parquet"), buf.getvalue())
        storage.write_bytes(storage.join(out, "metrics.md"), (table + "\n").encode())
    create_markdown_artifact(markdown=table, key="metrics-table", description=f"{pred} vs {gt}")
    return result
