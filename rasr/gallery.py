"""The reference gallery: one LanceDB table per (gallery, encoder), searched by cosine similarity.

Rows: id (sha256 of the image bytes), uri, relpath, category, width, height, size, mtime, encoder,
vector (fixed-size float32, unit length), added_at. Writes come from one place (the index flow).

Search is exact below `ANN_MIN_ROWS`: the table's vectors are loaded once into memory and a matmul
ranks them (exact, and ~100x faster than an unindexed LanceDB scan at 100k rows). Above it an
IVF-HNSW-SQ index is built and searched with a refine step.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from rasr import storage

ANN_MIN_ROWS = 100_000
DEFAULT_TABLE = "gallery"


class GalleryError(ValueError):
    """A gallery that cannot be opened or used as asked; the message says how to fix it."""


def table_name(name: str, encoder: str) -> str:
    """LanceDB table name of a (gallery, encoder) pair, e.g. gallery__efficientnet_lite0."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise GalleryError(f"gallery name {name!r} may only contain letters, digits, '_' and '-'")
    return f"{name}__{encoder.replace('-', '_')}"


def schema(dim: int, encoder: str, encoder_weights: str = "") -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("uri", pa.string()),
            pa.field("relpath", pa.string()),
            pa.field("category", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.string()),
            pa.field("encoder", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("added_at", pa.timestamp("us", tz="UTC")),
        ],
        metadata={"rasr.encoder": encoder, "rasr.encoder_weights": encoder_weights, "rasr.dim": str(dim)},
    )


@dataclass(frozen=True)
class Hit:
    id: str
    uri: str
    category: str
    similarity: float

    def as_dict(self) -> dict:
        return {"id": self.id, "uri": self.uri, "category": self.category,
                "similarity": round(float(self.similarity), 6)}


def connect(db_uri: str):
    import lancedb

    return lancedb.connect(db_uri, storage_options=storage.lance_storage_options(db_uri))


class Gallery:
    """A LanceDB table of reference embeddings."""

    def __init__(self, db_uri: str, table: str):
        self.db_uri = db_uri
        self.name = table
        self._db = connect(db_uri)
        self._table = None
        self._matrix = None  # cached exact-search data: (ids, uris, categories, vectors)

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, db_uri: str, table: str | None = None, encoder: str | None = None) -> "Gallery":
        """Open an existing table; with one table in the DB the name may be omitted."""
        names = list_tables(db_uri)
        if not names:
            raise GalleryError(f"no gallery tables in {storage.redact(db_uri)}: run `rasr index GALLERY --db {storage.redact(db_uri)}` first")
        if table and table in names:
            chosen = table
        else:
            candidates = names
            if table:
                candidates = [n for n in names if n.startswith(f"{table}__")]
            if encoder:
                candidates = [n for n in candidates if n.endswith(f"__{encoder.replace('-', '_')}")]
            if len(candidates) != 1:
                raise GalleryError(
                    f"cannot choose a table in {storage.redact(db_uri)} (table={table!r}, encoder={encoder!r}); "
                    f"tables there: {', '.join(names)}; pass --table NAME")
            chosen = candidates[0]
        g = cls(db_uri, chosen)
        g._table = g._db.open_table(chosen)
        return g

    @classmethod
    def create_or_open(cls, db_uri: str, name: str, encoder: str, dim: int, encoder_weights: str = "") -> "Gallery":
        tname = table_name(name, encoder)
        g = cls(db_uri, tname)
        if tname in list_tables(db_uri):
            g._table = g._db.open_table(tname)
            if g.dim != dim:
                raise GalleryError(f"table {tname} holds {g.dim}-d vectors but the encoder gives {dim}-d")
        else:
            g._table = g._db.create_table(tname, schema=schema(dim, encoder, encoder_weights))
        return g

    @property
    def table(self):
        if self._table is None:
            self._table = self._db.open_table(self.name)
        return self._table

    @property
    def meta(self) -> dict[str, str]:
        md = self.table.schema.metadata or {}
        return {k.decode(): v.decode() for k, v in md.items()}

    @property
    def encoder(self) -> str:
        return self.meta.get("rasr.encoder", "")

    @property
    def encoder_weights(self) -> str:
        return self.meta.get("rasr.encoder_weights", "")

    @property
    def dim(self) -> int:
        return self.table.schema.field("vector").type.list_size

    def count(self) -> int:
        return self.table.count_rows()

    def version(self) -> int:
        return self.table.version

    # ---- writing (single writer) --------------------------------------------------------------
    def files(self) -> dict[str, tuple[str, int, str]]:
        """uri -> (id, size, mtime) of every row: what the indexer compares with a fresh listing."""
        t = self.table.to_arrow().select(["uri", "id", "size", "mtime"]).to_pydict()
        return {u: (i, s, m) for u, i, s, m in zip(t["uri"], t["id"], t["size"], t["mtime"])}

    def upsert(self, rows: Sequence[dict]) -> None:
        """Insert new rows and replace rows with the same uri."""
        if not rows:
            return
        now = dt.datetime.now(dt.timezone.utc)
        data = pa.Table.from_pylist(
            [{**r, "added_at": r.get("added_at") or now, "vector": np.asarray(r["vector"], np.float32).tolist()}
             for r in rows],
            schema=self.table.schema)
        (self.table.merge_insert("uri").when_matched_update_all().when_not_matched_insert_all()
         .execute(data))
        self._matrix = None

    def delete_uris(self, uris: Iterable[str]) -> int:
        uris = list(uris)
        for i in range(0, len(uris), 500):
            chunk = uris[i:i + 500]
            quoted = ", ".join("'" + u.replace("'", "''") + "'" for u in chunk)
            self.table.delete(f"uri IN ({quoted})")
        self._matrix = None
        return len(uris)

    def maintain(self, compact: bool = True, keep_versions_for: dt.timedelta = dt.timedelta(minutes=10)) -> dict:
        """After bulk writes: build the ANN index above ANN_MIN_ROWS, compact files, drop old versions.

        Versions younger than `keep_versions_for` stay, so searches that opened one keep working."""
        info = {"rows": self.count(), "index": None}
        if info["rows"] >= ANN_MIN_ROWS:
            from lancedb.index import IvfHnswSq

            if not any(ix.name == "vector_idx" for ix in self.table.list_indices()):
                self.table.create_index("vector", config=IvfHnswSq(distance_type="cosine"), name="vector_idx")
            info["index"] = "IVF_HNSW_SQ"
        if compact:
            with warnings.catch_warnings():  # lance warns that 0 s drops versions readers may hold
                warnings.simplefilter("ignore", UserWarning)
                self.table.optimize(cleanup_older_than=keep_versions_for)
        info["version"] = self.version()
        return info

    # ---- searching -----------------------------------------------------------------------------
    def _load_matrix(self):
        if self._matrix is None:
            t = self.table.to_arrow().select(["id", "uri", "category", "vector"])
            vecs = t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            self._matrix = (
                np.asarray(t.column("id").to_pylist(), dtype=object),
                np.asarray(t.column("uri").to_pylist(), dtype=object),
                np.asarray(t.column("category").to_pylist(), dtype=object),
                np.asarray(vecs, np.float32).reshape(len(t), self.dim),
            )
        return self._matrix

    def search(self, queries: np.ndarray, k: int = 5, exclude_ids: Sequence[set[str] | str | None] | None = None,
               category: str | None = None) -> list[list[Hit]]:
        """Top-k references per query row by cosine similarity, best first.

        exclude_ids: per query, ids (sha256) that must not be returned, e.g. the query's own bytes."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.dim:
            raise GalleryError(f"query vectors are {queries.shape[1]}-d but table {self.name} holds {self.dim}-d "
                               f"({self.encoder}): embed the query with the same encoder")
        excl = [_as_set(e) for e in (exclude_ids or [None] * len(queries))]
        if self.count() == 0:
            return [[] for _ in queries]
        if self.count() < ANN_MIN_ROWS:
            return self._search_exact(queries, k, excl, category)
        return self._search_ann(queries, k, excl, category)

    def _search_exact(self, queries, k, excl, category):
        ids, uris, cats, vecs = self._load_matrix()
        sims = queries @ vecs.T  # (Q, N): unit vectors, so the dot product is the cosine
        if category is not None:
            sims[:, cats != category] = -np.inf
        results = []
        for qi, row in enumerate(sims):
            if excl[qi]:
                row = row.copy()
                row[np.isin(ids, list(excl[qi]))] = -np.inf
            order = np.argsort(-row, kind="stable")[:k]
            results.append([Hit(ids[j], uris[j], cats[j], float(row[j])) for j in order if np.isfinite(row[j])])
        return results

    def _search_ann(self, queries, k, excl, category):
        results = []
        for qi, q in enumerate(queries):
            query = (self.table.search(q, vector_column_name="vector").distance_type("cosine")
                     .limit(k + len(excl[qi])).refine_factor(10).select(["id", "uri", "category"]))
            if category is not None:
                query = query.where(f"category = '{category.replace(chr(39), chr(39) * 2)}'", prefilter=True)
            rows = query.to_list()
            hits = [Hit(r["id"], r["uri"], r["category"], 1.0 - float(r["_distance"]))
                    for r in rows if r["id"] not in excl[qi]]
            results.append(hits[:k])
        return results


def _as_set(e) -> set[str]:
    if e is None:
        return set()
    if isinstance(e, str):
        return {e}
    return set(e)


def list_tables(db_uri: str) -> list[str]:
    db = connect(db_uri)
    try:
        resp = db.list_tables()
        names = list(getattr(resp, "tables", resp))
    except AttributeError:  # older lancedb
        names = list(db.table_names())
    return sorted(names)
