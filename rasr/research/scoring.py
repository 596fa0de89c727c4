"""Scoring any tool's outputs against ground truth (`rasr metrics`): predictions matched to ground truth by
name (an enhance OUTPUT by its manifest), every metric per pair, the means and the one-row summary."""

from __future__ import annotations

import os
import re

import pandas as pd
import pyarrow as pa

from rasr import catalog, storage
from rasr.research import metrics
from rasr.restoration import images


def stem(relpath: str) -> str:
    return os.path.splitext(relpath)[0]


_TAG = re.compile(r"~[0-9a-f]{16}$")


def output_stem(relpath: str) -> str:
    """The input path an enhance output name stands for, without extension: the appended format extension
    and the hash tag are taken off (`cats/a.jpg.png` -> `cats/a`, `IMG_1.JPG~3f0c...png` -> `IMG_1`)."""
    base = os.path.splitext(relpath)[0]  # the appended output extension (or a plain file's own)
    base = _TAG.sub("", base)
    return stem(base) if os.path.splitext(base)[1].lower() in images.IMAGE_EXTENSIONS else base


def pair_by_name(pred: str, gt: str) -> tuple[list[tuple[catalog.Item, catalog.Item]], list[str]]:
    """Images under `pred` matched to ground truth under `gt` by relative path without extension (or by file
    name): (pairs, relpaths of unmatched predictions). `pred` may be an enhance OUTPUT (its manifest says
    which input each output is) or any folder of images, enhance's OUTPUT/images included."""
    if storage.exists(storage.join(pred, catalog.MANIFEST_DIR)):
        from rasr.manifest import read_manifest

        preds = {stem(r["relpath"]): catalog.Item(r["output_uri"], r["relpath"], 0, "")
                 for r in read_manifest(pred).to_pylist() if r["status"] == "ok" and r["output_uri"]}
    else:
        preds = {output_stem(i.relpath): i for i in catalog.list_inputs(pred) if i.is_image}
    gts = {stem(i.relpath): i for i in catalog.list_inputs(gt) if i.is_image}
    if not gts:
        raise ValueError(f"no images under {storage.redact(gt)}")
    by_base = {os.path.basename(k): k for k in gts}
    pairs, unmatched = [], []
    for key, item in preds.items():
        g = gts.get(key) or gts.get(by_base.get(os.path.basename(key), ""))
        (pairs.append((item, g)) if g else unmatched.append(item.relpath))
    if not pairs:
        raise ValueError(f"no file in {storage.redact(pred)} matches a file in {storage.redact(gt)} by name")
    return pairs, unmatched


def score_pairs(pairs, metric_names: list[str], crop_border: int = 0,
                progress=lambda it: it) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per (prediction, ground truth) pair with every metric (None where unavailable or the
    image is too small for NIQE), and each metric's status; a pair that fails is a row with its reason."""
    suite = metrics.MetricSuite(list(metric_names), crop_border=crop_border)
    rows = []
    for p, g in progress(pairs):
        row = {"image": p.relpath, "pred_uri": p.uri, "gt_uri": g.uri, "status": "ok", "error": None, "notes": None,
               **{m: None for m in metric_names}}
        try:
            x = images.load_rgb(storage.read_bytes(p.uri))
            y = images.load_rgb(storage.read_bytes(g.uri))
            values, reasons = suite.score_with_reasons(x, y)
            row.update(values)
            if reasons:  # the metrics that could not run on this image, each with why; the others are scored
                row["notes"] = "; ".join(f"{m}: {why}" for m, why in reasons.items())
        except Exception as e:  # noqa: BLE001 - one bad pair is a row with the reason
            row.update(status="error", error=storage.redact(str(e)))
        rows.append(row)
    status = {m: suite.status[m] for m in metric_names}
    if "fid" not in status:
        status["fid"] = metrics.check("fid")
    return pd.DataFrame(rows), status


def score_summary(df: pd.DataFrame, status: dict[str, str], metric_names: list[str], pred: str,
                  gt: str) -> tuple[dict[str, float | None], pd.DataFrame]:
    """Each metric's mean over the scored pairs (None when unavailable), FID between the two folders
    (local folders only), and the one-row summary Table 1 is made from."""
    fid_value = None
    if status["fid"] == metrics.OK and not storage.is_remote(pred) and not storage.is_remote(gt):
        fid_value = metrics.fid(pred, gt)
    means = {m: (None if status[m] != metrics.OK or m not in df or df[m].isna().all() else float(df[m].mean()))
             for m in metric_names}
    means["fid"] = fid_value
    summary = pd.DataFrame([{"method": "pred", "ref_mode": "none", "images": int((df["status"] == "ok").sum()),
                             **means}])
    return means, summary


def score_folder(pred: str, gt: str, out: str | None, cfg: metrics.ScoreConfig, progress=lambda it: it) -> dict:
    """Every prediction under `pred` scored against its ground truth under `gt`; with `out`, metrics.parquet,
    summary.parquet and metrics.md written there. Returns the pairs, the means, each metric's status and
    Table 1's text."""
    from rasr.results import evaluation_report

    names = list(cfg.metrics)
    pairs, unmatched = pair_by_name(pred, gt)
    df, status = score_pairs(pairs, names, cfg.crop_border, progress)
    means, summary = score_summary(df, status, names, pred, gt)
    table = evaluation_report.table1_markdown(summary, {**status}, None)
    if out:
        storage.write_parquet(storage.join(out, "metrics.parquet"), pa.Table.from_pandas(df, preserve_index=False))
        storage.write_parquet(storage.join(out, "summary.parquet"), pa.Table.from_pandas(summary, preserve_index=False))
        storage.write_bytes(storage.join(out, "metrics.md"), (table + "\n").encode())
    return {"pairs": len(pairs), "unmatched": unmatched, "failed": int((df["status"] == "error").sum()),
            "means": means, "status": status, "table": table,
            "notes": [f"{r['image']}: {r['notes']}" for r in df.to_dict("records") if r.get("notes")]}
