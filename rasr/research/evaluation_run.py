"""The test-set side of evaluation, without Prefect or Ray: `given` reference pairs, existing LR files,
which Table 5 encoders can run, FID per method, and scoring any tool's outputs against ground truth
(`rasr metrics`)."""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile

import pandas as pd
import pyarrow as pa

from rasr import catalog, storage
from rasr.research import metrics
from rasr.restoration import images
from rasr.retrieval.encoder_names import TABLE5_ENCODERS


def stem(relpath: str) -> str:
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
        by_name.setdefault(stem(it.relpath), it.relpath)
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    pairs = {}
    for r in rows:
        key = by_name.get(r["image"]) or by_name.get(stem(r["image"]))
        if key is None:
            raise ValueError(f"{path}: image {r['image']!r} is not in the test set")
        ref = r["ref"]
        pairs[key] = ref if ("://" in ref or os.path.isabs(ref)) else storage.join(base, ref)
    return pairs


def match_lr(lr_dir: str, items: list[catalog.Item]) -> dict[str, str]:
    """Existing LR files matched to HR files by relative path without extension."""
    lrs = {stem(i.relpath): i.uri for i in catalog.list_inputs(lr_dir) if i.is_image}
    found = {it.relpath: lrs[stem(it.relpath)] for it in items if stem(it.relpath) in lrs}
    if not found:
        raise ValueError(f"no LR file in {lr_dir} matches an HR file by relative path (without extension)")
    return found


def encoder_status(db: str | None, table: str | None, encoders: list[str]) -> tuple[dict[str, str], list[str], str | None]:
    """Which Table 5 encoders can run: their weights load and the DB has their gallery table.
    Returns (status per encoder, the extra encoders to run, the primary table's encoder)."""
    from rasr.retrieval.encoders import load_encoder
    from rasr.retrieval.gallery import Gallery, list_tables

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
            status[enc] = (f"unavailable: no table {base}__{enc.replace('-', '_')}: "
                           f"run `rasr index GALLERY --db {db} --encoder {enc}`")
            continue
        status[enc] = "ok"
        usable.append(enc)
    for enc in TABLE5_ENCODERS:
        status.setdefault(enc, "not requested")
    return status, usable, primary.encoder


def fid_per_run(rows: pd.DataFrame) -> dict[tuple[str, str], float | None]:
    """Set-level FID of each (method, ref_mode) against the ground truth of the rows that succeeded;
    {} when FID is unavailable."""
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


def write_results(out: str, items: list[catalog.Item], cfg, enc_status: dict[str, str],
                  primary: str | None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str], str, str | None]:
    """Summaries over everything evaluated under this config (this run and earlier, resumed ones):
    summary.parquet, table1.md, table5.md (with a gallery) and report.html under `out`. Returns
    (the rows of `items`, the summary, the metrics' status, Table 1's text, Table 5's or None)."""
    from rasr import manifest
    from rasr.results import evaluation_report
    from rasr.research.evaluation import EVAL_SCHEMA, RETRIEVAL_DIR, RETRIEVAL_SCHEMA

    rows = manifest.read_table(out, catalog.MANIFEST_DIR, EVAL_SCHEMA).to_pandas()
    rows = rows[rows["relpath"].isin({i.relpath for i in items})]
    retrieval = manifest.read_table(out, RETRIEVAL_DIR, RETRIEVAL_SCHEMA).to_pandas()
    status = {**metrics.status(list(cfg.metrics)), "fid": metrics.check("fid")}
    summary = evaluation_report.summarize(rows, fid_per_run(rows))
    table1 = evaluation_report.table1_markdown(summary, status, cfg.baseline)
    table5 = table5_page = None
    if cfg.db:
        table5 = evaluation_report.table5_markdown(retrieval, summary, enc_status, cfg.table5_method, primary)
        table5_page = evaluation_report.table5_html(retrieval, summary, enc_status, cfg.table5_method, primary)
    html = evaluation_report.html_report(rows, summary, status, cfg.baseline, table5_page, n_examples=cfg.examples)
    storage.write_bytes(storage.join(out, "report.html"), html.encode())
    storage.write_bytes(storage.join(out, "table1.md"), (table1 + "\n").encode())
    if table5:
        storage.write_bytes(storage.join(out, "table5.md"), (table5 + "\n").encode())
    storage.write_parquet(storage.join(out, "summary.parquet"), pa.Table.from_pandas(summary, preserve_index=False))
    return rows, summary, status, table1, table5
