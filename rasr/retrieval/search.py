"""Retrieval from a gallery: the `Retriever` every job that retrieves holds, and batch search.

`Retriever` opens a gallery table, loads the table's own encoder and prepares queries as the table's
vectors were made: the enhance and evaluation workers, the dataset actors, batch search and
`rasr search` all retrieve through it. `Searcher` answers many query photos with one row each (the
Ray actor in tasks/ is a thin shell around it; `rasr search` writes the rows as JSON lines or Parquet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rasr import storage
from rasr.restoration import images
from rasr.catalog import Item
from rasr.retrieval.gallery import content_id
from rasr.options import STRICT, GalleryOptions, option

SCHEMA = pa.schema([
    pa.field("query_uri", pa.string()),
    pa.field("relpath", pa.string()),
    pa.field("status", pa.string()),     # ok | error | skipped
    pa.field("error", pa.string()),
    pa.field("ids", pa.list_(pa.string())),
    pa.field("uris", pa.list_(pa.string())),
    pa.field("categories", pa.list_(pa.string())),
    pa.field("similarities", pa.list_(pa.float32())),
])


@dataclass
class SearchConfig(GalleryOptions):
    """The gallery searched (GalleryOptions) and what a search returns for each query."""

    __pydantic_config__ = STRICT
    CLI_REQUIRED = ("db",)

    k: int = option(5, "How many references.", flags=("-k", "--top-k"), low=1, high=1000)
    category: str | None = option(None, "Only references of this category.")


class Retriever:
    """A gallery table (`db`, `table`; or the table of `encoder` beside it) with its own encoder loaded and
    configured, so queries are embedded the way the table's vectors were."""

    def __init__(self, db: str, table: str | None = None, encoder_weights: str | None = None,
                 device: str | None = None, encoder: str | None = None):
        from rasr.retrieval.encoders import load_encoder
        from rasr.retrieval.gallery import Gallery

        self.gallery = Gallery.open(db, table, encoder=encoder)
        self.encoder = load_encoder(self.gallery.encoder, weights=encoder_weights, device=device)
        self.gallery.configure(self.encoder)

    content_id = staticmethod(content_id)

    def embed(self, rgbs: list) -> np.ndarray:
        return self.encoder.encode(rgbs)

    def search(self, vecs: np.ndarray, k: int, exclude_ids: list[str] | None = None, category: str | None = None):
        """Per query vector, its k nearest references (Gallery.search)."""
        return self.gallery.search(vecs, k=k, exclude_ids=exclude_ids, category=category)

    def retrieve(self, rgb, category: str | None, k: int) -> tuple[list[str], list[float]]:
        """(uris, similarities) of the k references nearest to one decoded image (a dataset's GT crop)."""
        hits = self.search(self.embed([rgb]), k=k, category=category)[0]
        return [h.uri for h in hits], [h.similarity for h in hits]


class Searcher:
    """Many query photos against one Retriever (loaded once): one row per query."""

    def __init__(self, db: str, table: str | None = None, encoder_weights: str | None = None,
                 device: str | None = None, max_pixels: int = images.DEFAULT_MAX_PIXELS):
        self.retriever = Retriever(db, table, encoder_weights, device)
        self.max_pixels = max_pixels

    def search(self, items: list[Item], k: int = 5, category: str | None = None) -> list[dict]:
        """One row per item, in order; an identical image (same sha256) is never its own reference."""
        rows, decoded, ids, at = [], [], [], []
        for it in items:
            row = {"query_uri": it.uri, "relpath": it.relpath, "status": "ok", "error": None,
                   "ids": [], "uris": [], "categories": [], "similarities": []}
            rows.append(row)
            if not it.is_image:
                row.update(status=it.status or "skipped", error=it.reason or "not an image file extension")
                continue
            try:
                data = storage.read_bytes(it.uri)
                decoded.append(images.decode_image(data, max_pixels=self.max_pixels).rgb)
            except Exception as e:  # noqa: BLE001 - a bad query gets its reason, the others go on
                row.update(status="error", error=storage.redact(e))
                continue
            ids.append(content_id(data))
            at.append(len(rows) - 1)
        if decoded:
            hits = self.retriever.search(self.retriever.embed(decoded), k=k, exclude_ids=ids, category=category)
            for i, found in zip(at, hits):
                rows[i].update(ids=[h.id for h in found], uris=[h.uri for h in found],
                               categories=[h.category for h in found],
                               similarities=[float(h.similarity) for h in found])
        return rows


def write_rows(uri: str, rows: list[dict]) -> None:
    """JSON lines (.jsonl / .json) or Parquet (.parquet), chosen by the extension."""
    if uri.endswith(".parquet"):
        storage.write_parquet(uri, rows, SCHEMA, compression="zstd")
    elif uri.endswith((".jsonl", ".json")):
        storage.write_bytes(uri, "".join(json.dumps(r) + "\n" for r in rows).encode())
    else:
        raise ValueError(f"--out {storage.redact(uri)}: give a .jsonl or .parquet file name")
