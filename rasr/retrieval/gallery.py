"""The reference gallery: one LanceDB table per (gallery, encoder), searched by cosine similarity.

Rows: id (sha256 of the image bytes), uri, relpath, category, width, height, size, mtime, encoder,
vector (fixed-size float32, unit length), added_at. Writes come from one place (the index flow).

Search is batched (one call per batch of queries). Below `ANN_MIN_ROWS` it is exact: the table's vectors
are loaded once per table version into a matrix and one matmul + partial top-k ranks them (~100x
faster than an unindexed LanceDB scan; rasr/retrieval/exact_search.py). Above it `maintain` builds an IVF-SQ index, searched
with a
float32 re-rank so returned similarities are exact. Figures and the choice of thresholds:
bench/retrieval.py and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import hashlib
import datetime as dt
import re
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute

from rasr import storage
from rasr.catalog import chunks
from rasr.retrieval.exact_search import ExactIndex, Hit, TableChanged, as_set, groups

# Exact/ANN crossover in rows, measured by bench/retrieval.py (2 cores, 1280-d) with the exact path ranking in bf16
# and re-ranking in float32 (rasr/retrieval/exact_search.py): ANN answers batches of 256 faster above ~180k rows, single
# queries above ~60k. At the paper's gallery size (85k) the exact path answers 1,054 q/s batched, 1.6x a plain float32
# torch matmul + topk and 2x the ANN index. Every model actor holds the exact matrix (6 B x dim per row, float32 +
# bf16: 730 MB at 100k rows of 1280-d) while the ANN path holds ~32 MB per 100k rows.
ANN_MIN_ROWS = 100_000
# ANN index and search settings, chosen by bench/retrieval.py (see docs/PERFORMANCE.md).
ANN_INDEX = "IVF_SQ"  # or "IVF_HNSW_SQ"
ANN_ROWS_PER_PARTITION = 2048
ANN_NPROBES = 4  # IVF partitions visited per query
ANN_EF = 100  # HNSW candidate list (IVF_HNSW_SQ only)
ANN_REFINE = 5  # re-rank refine_factor x limit candidates with the stored float32 vectors: exact similarities
DEFAULT_TABLE = "gallery"


def content_id(data: bytes) -> str:
    """A photo's id in a gallery table, a manifest and a query's exclusions: the sha256 of its bytes (the same
    photo under two names is one id; a query never retrieves its own bytes)."""
    return hashlib.sha256(data).hexdigest()


def ann_index_params(rows: int) -> dict:
    """Index build parameters for a table of `rows` rows."""
    return {"num_partitions": max(1, rows // ANN_ROWS_PER_PARTITION)}


def _ann_config(rows: int):
    from lancedb.index import IvfHnswSq, IvfSq

    kinds = {"IVF_SQ": IvfSq, "IVF_HNSW_SQ": IvfHnswSq}
    if ANN_INDEX not in kinds:
        raise GalleryError(f"ANN_INDEX={ANN_INDEX!r} is not one of {sorted(kinds)}")
    return kinds[ANN_INDEX](distance_type="cosine", **ann_index_params(rows))


class GalleryError(ValueError):
    """A gallery that cannot be opened or used as asked; the message says how to fix it."""


def table_name(name: str, encoder: str) -> str:
    """LanceDB table name of a (gallery, encoder) pair, e.g. gallery__efficientnet_lite0."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise GalleryError(f"gallery name {name!r} may only contain letters, digits, '_' and '-'")
    return f"{name}__{encoder.replace('-', '_')}"


# How a new table's vectors are made, chosen by bench/retrieval_quality.py (README, "Retrieval quality"):
# the whole photo letterboxed (a centre crop drops a third of a 3:2 scan), and each reference embedded
# clean and after the x4 Real-ESRGAN degradation, the two pooled, so that degraded queries find it.
GALLERY_PREPROCESSING = "letterbox"
GALLERY_VIEWS = "clean+realesrgan-x4"
LEGACY = {"rasr.preprocessing": "crop", "rasr.gallery_views": "clean"}  # tables made before these were recorded


def schema(dim: int, encoder: str, encoder_weights: str = "", preprocessing: str = GALLERY_PREPROCESSING,
           views: str = GALLERY_VIEWS) -> pa.Schema:
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
            pa.field("quality", pa.string()),  # "" or why the reference is doubtful (rasr.retrieval.index_run.hygiene)
        ],
        metadata={"rasr.encoder": encoder, "rasr.encoder_weights": encoder_weights, "rasr.dim": str(dim),
                  "rasr.preprocessing": preprocessing, "rasr.gallery_views": views},
    )


def connect(db_uri: str):
    import lancedb

    return lancedb.connect(db_uri, storage_options=storage.lance_storage_options(db_uri))


def empty_warning(db_uri: str, table: str | None = None, failed: int = 0) -> str | None:
    """A warning when the gallery table holds no photo (retrieval then finds nothing), else None."""
    g = Gallery.open(db_uri, table)
    if g.count():
        return None
    why = f" (all {failed} files failed: see the index summary)" if failed else ""
    return (f"gallery table {g.name} in {storage.redact(db_uri)} holds no photos{why}: retrieval will find no "
            f"reference; index photos with `rasr index GALLERY --db {storage.redact(db_uri)}`")


class Gallery:
    """A LanceDB table of reference embeddings."""

    def __init__(self, db_uri: str, table: str):
        self.db_uri = db_uri
        self.name = table
        self._db = connect(db_uri)
        self._table = None
        # Cached per opened table version (see _invalidate): row count, index presence, exact-search data.
        self._matrix = None
        self._exact = None
        self._rows = None
        self._indexed = None
        self._meta = None
        self._dim = None

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, db_uri: str, table: str | None = None, encoder: str | None = None) -> Gallery:
        """Open an existing table; with one table in the DB the name may be omitted."""
        chosen = choose_table(list_tables(db_uri), db_uri, table, encoder)
        g = cls(db_uri, chosen)
        g._table = g._db.open_table(chosen)
        return g

    @classmethod
    def create_or_open(cls, db_uri: str, name: str, encoder: str, dim: int, encoder_weights: str = "") -> Gallery:
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
    def preprocessing(self) -> str:
        """How this table's images were prepared for the encoder; queries must be prepared the same way."""
        return self.meta.get("rasr.preprocessing", LEGACY["rasr.preprocessing"])

    @property
    def views(self) -> str:
        """Which views of each reference its vector pools ("clean", or "clean+realesrgan-x4")."""
        return self.meta.get("rasr.gallery_views", LEGACY["rasr.gallery_views"])

    def configure(self, encoder) -> None:
        """Make `encoder` embed queries the way this table's vectors were made."""
        encoder.preprocessing = self.preprocessing

    @property
    def upgrade_hint(self) -> str | None:
        """What an older table misses, or None when it has today's defaults (another encoder chosen on
        purpose is not an upgrade; only the old default efficientnet-lite0 is)."""
        from rasr.retrieval.encoder_names import DEFAULT_ENCODER

        old_encoder = self.encoder == "efficientnet-lite0"
        if (self.preprocessing, self.views) == (GALLERY_PREPROCESSING, GALLERY_VIEWS) and not old_encoder:
            return None
        encoder = f"encoder {self.encoder}, " if old_encoder else ""
        today = f"{DEFAULT_ENCODER}, " if old_encoder else ""
        return (f"table {self.name} was indexed with {encoder}preprocessing={self.preprocessing}, views={self.views}; "
                f"a table indexed today uses {today}{GALLERY_PREPROCESSING}, {GALLERY_VIEWS} (+15 points top-1 on "
                f"degraded photos in bench/retrieval_quality.py): re-index into a new DB or --table"
                f"{' with --encoder ' + DEFAULT_ENCODER if old_encoder else ''} for better results")

    @property
    def dim(self) -> int:
        if self._dim is None:  # fixed for the table's life: read once, not per search
            self._dim = self.table.schema.field("vector").type.list_size
        return self._dim

    def count(self) -> int:
        """Rows in the opened table version (cached until a write or refresh)."""
        if self._rows is None:
            self._rows = self.table.count_rows()
        return self._rows

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
        self._invalidate()

    def delete_uris(self, uris: Iterable[str]) -> int:
        uris = list(uris)
        for chunk in chunks(uris, 500):
            quoted = ", ".join("'" + u.replace("'", "''") + "'" for u in chunk)
            self.table.delete(f"uri IN ({quoted})")
        self._invalidate()
        return len(uris)

    def maintain(self, compact: bool = True, keep_versions_for: dt.timedelta = dt.timedelta(minutes=10)) -> dict:
        """After bulk writes: build the ANN index above ANN_MIN_ROWS, compact files, drop old versions.

        Versions younger than `keep_versions_for` stay, so searches that opened one keep working."""
        info = {"rows": self.count(), "index": None}
        if info["rows"] >= ANN_MIN_ROWS:
            if not any(ix.name == "vector_idx" for ix in self.table.list_indices()):
                self.table.create_index("vector", config=_ann_config(info["rows"]), name="vector_idx")
            info["index"] = ANN_INDEX
        if compact:
            with warnings.catch_warnings():  # lance warns that 0 s drops versions readers may hold
                warnings.simplefilter("ignore", UserWarning)
                self.table.optimize(cleanup_older_than=keep_versions_for)
        self._invalidate()
        info["version"] = self.version()
        return info

    # ---- searching -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """See writes made through other handles (other processes): move to the latest table version."""
        self.table.checkout_latest()
        self._invalidate()

    def _invalidate(self) -> None:
        # Everything cached describes one table version; a write or a refresh starts a new one.
        self._matrix = None
        self._exact = None
        self._rows = None
        self._indexed = None
        self._meta = None

    def _load_exact(self) -> ExactIndex:
        if self._exact is None:
            try:
                self._exact = ExactIndex.load(self.table, self.dim)
            except TableChanged as e:
                raise GalleryError(f"table {self.name}: {e}") from None
            self._matrix = None
        return self._exact

    def _load_matrix(self):
        """(ids, uris, categories, vectors) of every row, rows grouped by category (stable within one)."""
        if self._matrix is None:
            e = self._load_exact()
            self._matrix = (e.ids, e.uris, e.cats, e.vecs.numpy())
        return self._matrix

    def _use_ann(self, rows: int) -> bool:
        # Without an index LanceDB scans every row per query (~1 q/s at 100k): the in-memory matmul is
        # far faster, so a table above the threshold that was never `maintain`ed is searched exactly.
        if rows < ANN_MIN_ROWS:
            return False
        if self._indexed is None:
            self._indexed = any(ix.name == "vector_idx" for ix in self.table.list_indices())
        return self._indexed

    def search(self, queries: np.ndarray, k: int = 5, exclude_ids: Sequence[set[str] | str | None] | None = None,
               category: str | None | Sequence[str | None] = None) -> list[list[Hit]]:
        """Top-k references per query row by cosine similarity, best first, in one batched search.

        exclude_ids: per query, ids (sha256) that must not be returned, e.g. the query's own bytes.
        category: one category for all queries, or a sequence with one category (or None) per query."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise GalleryError(f"query vectors are {queries.shape[1:]} but table {self.name} holds {self.dim}-d "
                               f"({self.encoder}): embed the query with the same encoder")
        n = len(queries)
        if exclude_ids is None:
            exclude_ids = [None] * n
        elif isinstance(exclude_ids, str) or len(exclude_ids) != n:
            raise GalleryError(f"exclude_ids must hold one entry (a set of ids, an id or None) per query: "
                               f"got {1 if isinstance(exclude_ids, str) else len(exclude_ids)} for {n} queries")
        if category is None or isinstance(category, str):
            cats = [category] * n
        elif len(category) != n:
            raise GalleryError(f"category must be one string or one entry per query: got {len(category)} "
                               f"for {n} queries")
        else:
            cats = list(category)
        excl = [as_set(e) for e in exclude_ids]
        if self._rows is None:  # once per table version, not per query
            self._rows = self.table.count_rows()
        if self._rows == 0 or k < 1 or n == 0:
            return [[] for _ in range(n)]
        # Cosine similarity: stored vectors are unit length, queries are normalised here.
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = queries / np.where(norms > 0, norms, 1)
        if self._use_ann(self._rows):
            return self._search_ann(queries, k, excl, cats)
        return self._load_exact().search(queries, k, excl, cats)

    def _search_ann(self, queries, k, excl, cats):
        results: list[list[Hit]] = [[] for _ in queries]
        for cat, qidx in groups(cats).items():
            # Excluded ids are dropped after the search, so ask for that many more.
            limit = k + max(len(excl[i]) for i in qidx)
            found = self._ann_query(queries[qidx], limit, cat, ANN_NPROBES)
            # A narrow category can have fewer than `limit` rows in the probed partitions: search those
            # queries again over every partition that needs it (uncapped probing costs a full scan of the
            # quantised codes, ~80 ms at 1M rows, so it is not the default).
            want = min(limit, self._ann_rows_in(cat))
            short = [j for j, f in enumerate(found) if len(f) < want]
            if short:
                for j, f in zip(short, self._ann_query(queries[[qidx[j] for j in short]], limit, cat, 0)):
                    found[j] = f
            for qi, f in zip(qidx, found):
                results[qi] = [h for h in f if h.id not in excl[qi]][:k]
        return results

    def _ann_query(self, vecs: np.ndarray, limit: int, cat: str | None, max_probes: int) -> list[list[Hit]]:
        """One LanceDB query for a batch of vectors (multi-vector search); hits per vector, nearest first."""
        query = (self.table.search(list(vecs) if len(vecs) > 1 else vecs[0], vector_column_name="vector")
                 .distance_type("cosine").limit(limit).ef(max(ANN_EF, limit * ANN_REFINE))
                 .minimum_nprobes(ANN_NPROBES).maximum_nprobes(max_probes)
                 .refine_factor(ANN_REFINE).select(["_distance"]).with_row_id(True))
        if cat is not None:
            query = query.where(f"category = '{cat.replace(chr(39), chr(39) * 2)}'", prefilter=True)
        t = query.to_arrow()
        qcol = (t.column("query_index").to_numpy() if "query_index" in t.column_names
                else np.zeros(t.num_rows, np.int32))
        dist = t.column("_distance").to_numpy()
        ids, uris, rcats = self._ann_meta(t.column("_rowid").to_numpy())
        found: list[list[Hit]] = [[] for _ in vecs]
        for j in np.lexsort((dist, qcol)):  # per query, nearest first
            found[qcol[j]].append(Hit(ids[j], uris[j], rcats[j], 1.0 - float(dist[j])))
        return found

    def _ann_rows_in(self, cat: str | None) -> int:
        self._ann_meta(np.zeros(0, np.int64))
        return self._meta[2].get(cat, 0) if cat is not None else len(self._meta[0])

    def _ann_meta(self, rowids: np.ndarray) -> tuple[list, list, list]:
        """(ids, uris, categories) of row ids, from a per-version in-memory copy of those columns.

        Fetching them with each query costs a second read per query (~1.5 ms of a ~7 ms query); the copy
        holds ~32 MB per 100k rows (Arrow strings and row ids), against 488 MB for a 1280-d exact matrix."""
        if self._meta is None:
            t = (self.table.search().select(["id", "uri", "category"]).with_row_id(True).limit(None)
                 .to_arrow().combine_chunks())
            rid = t.column("_rowid").to_numpy()
            order = np.argsort(rid)
            per_cat = pa.compute.value_counts(t.column("category")).to_pylist()
            self._meta = (rid[order], t.select(["id", "uri", "category"]).take(pa.array(order)),
                          {c["values"]: c["counts"] for c in per_cat})
        known, meta, _ = self._meta
        pos = np.searchsorted(known, rowids)
        if len(rowids) and (pos.max() >= len(known) or (known[pos] != rowids).any()):
            raise GalleryError(f"table {self.name} changed under an open search: call refresh() and search again")
        t = meta.take(pa.array(pos))
        return t.column("id").to_pylist(), t.column("uri").to_pylist(), t.column("category").to_pylist()


def choose_table(names: list[str], db_uri: str, table: str | None = None, encoder: str | None = None) -> str:
    """The table `open` uses among a DB's table `names`: `table` itself, else the only `<table>__<encoder>`
    match, else the only table; GalleryError saying how to choose otherwise."""
    shown = storage.redact(db_uri)
    if not names:
        raise GalleryError(f"no gallery tables in {shown}: run `rasr index GALLERY --db {shown}` first")
    if table and table in names:
        return table
    candidates = names
    if table:
        candidates = [n for n in names if n.startswith(f"{table}__")]
    if encoder:
        candidates = [n for n in candidates if n.endswith(f"__{encoder.replace('-', '_')}")]
    if len(candidates) != 1:
        raise GalleryError(f"cannot choose a table in {shown} (table={table!r}, encoder={encoder!r}); "
                           f"tables there: {', '.join(names)}; pass --table NAME")
    return candidates[0]


def table_encoder(db_uri: str, name: str = DEFAULT_TABLE) -> str | None:
    """The encoder of the one existing `<name>__<encoder>` table in db_uri, or None (no DB yet, no such
    table, or several): re-indexing without --encoder keeps writing the table a gallery already has."""
    from rasr.retrieval.encoder_names import ENCODERS

    if not storage.is_remote(db_uri) and not storage.exists(db_uri):
        return None
    names = set(list_tables(db_uri))
    found = [e for e in ENCODERS if table_name(name, e) in names]
    return found[0] if len(found) == 1 else None


def list_tables(db_uri: str) -> list[str]:
    db = connect(db_uri)
    try:
        resp = db.list_tables()
        names = list(getattr(resp, "tables", resp))
    except AttributeError:  # older lancedb
        names = list(db.table_names())
    return sorted(names)
