"""An evaluation run before and after its shards, without Prefect or Ray: its checks, its plan (the test
set listed, `given` reference pairs and existing LR files read into the config, which Table 5 encoders
can run, the shards not yet done) and its results (FID per method, summary.parquet, Table 1 and 5,
report.html). The per-image work is rasr/research/evaluation.py's; flows/evaluate.py fans it out."""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from dataclasses import dataclass, replace

import pandas as pd
import pyarrow as pa

from rasr import catalog, storage
from rasr.research import metrics
from rasr.research.evaluation import REF_MODES, EvalConfig
from rasr.research.scoring import stem
from rasr.retrieval.encoder_names import TABLE5_ENCODERS


@dataclass
class EvalPlan:
    """What an evaluation run will do: the test images, the config with what was read into it (its hash is
    the run's), which Table 5 encoders run, and shards of the images not yet evaluated under it."""

    items: list[catalog.Item]
    cfg: EvalConfig
    enc_status: dict[str, str]
    primary: str | None          # the primary table's encoder
    shards: list[catalog.Shard]
    planned_at: float            # when the done-markers were read (a marker newer than this is another run's)

    @property
    def todo(self) -> int:
        return sum(len(s.items) for s in self.shards)


def check(cfg: EvalConfig) -> None:
    """Reference modes that exist, and what the ones chosen need."""
    for mode in cfg.ref_modes:
        if mode not in REF_MODES:
            raise ValueError(f"unknown reference mode {mode!r}: choose from {', '.join(REF_MODES)}")
    if "given" in cfg.ref_modes and not cfg.pairs_file:
        raise ValueError("reference mode 'given' needs --pairs CSV (columns image,ref)")


def plan(hr: str, out: str, cfg: EvalConfig) -> EvalPlan:
    """Check the config, list the HR test set, read the `given` pairs and LR files into the config, find the Table 5
    encoders that can run, and shard the images not yet evaluated under the resulting config."""
    check(cfg)
    items = [i for i in catalog.list_inputs(hr) if i.is_image]
    if not items:
        raise ValueError(f"no images under {storage.redact(hr)}")
    enc_status, extra_encoders, primary = encoder_status(cfg.db, cfg.table, list(cfg.encoders))
    cfg = replace(cfg, encoders=extra_encoders, pairs=read_pairs(cfg.pairs_file, items) if cfg.pairs_file else {},
                  lr_files=match_lr(cfg.lr_dir, items) if cfg.lr_dir else {})
    cfg_hash = cfg.hash()
    planned_at = time.time()
    done = catalog.covered(catalog.done_markers(out), cfg_hash)
    return EvalPlan(items, cfg, enc_status, primary, catalog.plan(items, done, cfg_hash, cfg.shard_size), planned_at)


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
