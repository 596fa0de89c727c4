"""Exact top-k over one gallery table version held in memory (below ANN_MIN_ROWS, rasr/retrieval/gallery.py).

The vectors are a float32 matrix with rows grouped by category, so a category filter is a contiguous
slice and exclusions are a few index writes; one matmul + partial top-k ranks a batch of queries
(~100x faster than an unindexed LanceDB scan; bench/retrieval.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rasr.catalog import chunks


class TableChanged(ValueError):
    """The table was written while it was being read: search again."""


@dataclass(frozen=True)
class Hit:
    id: str
    uri: str
    category: str
    similarity: float

    def as_dict(self) -> dict:
        return {"id": self.id, "uri": self.uri, "category": self.category,
                "similarity": round(float(self.similarity), 6)}



class ExactIndex:
    """One table version in memory for exact search: a float32 torch matrix with rows grouped by category,
    so a category filter is a contiguous slice (no mask, and a smaller matmul), and id -> row positions,
    so exclusions are a few index writes instead of a comparison over all ids."""

    # Similarity rows held at once: bounds the (queries x rows) score matrix to 256 MB.
    MAX_SCORES = 64 << 20
    # From this many rows (in the searched slice) rank in bf16 and re-rank in float32: 1.36x the float32 path at 85k
    # rows in batches (bench/retrieval.py); below it the float32 matmul is as fast and needs no second copy
    LOW_PRECISION_MIN_ROWS = 20_000
    RERANK = 32  # extra bf16 candidates re-ranked exactly: bf16 errors (~4e-3 on a cosine) never reach past them

    def __init__(self, ids: np.ndarray, uris: np.ndarray, cats: np.ndarray, vecs: np.ndarray):
        """Rows already grouped by category (see load); a missing category groups as ''."""
        import torch

        self.ids, self.uris, self.cats, self.mat = ids, uris, cats, vecs
        self.vecs = torch.from_numpy(vecs)  # the same memory, for torch callers
        self.low_precision = torch.bfloat16
        self._low_mat = None
        self.slices: dict[str, tuple[int, int]] = {}
        keys = np.asarray([c if c is not None else "" for c in cats], dtype=object)
        if len(keys):
            edges = np.flatnonzero(keys[1:] != keys[:-1]) + 1
            for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(keys)]):
                self.slices[keys[lo]] = (int(lo), int(hi))
        self.positions: dict[str, list[int]] = {}
        for p, i in enumerate(ids):  # an image stored under two uris has two rows with one id
            self.positions.setdefault(i, []).append(p)

    def head(self, n: int) -> ExactIndex:
        """The first n rows as their own (views, no copy); for measuring size effects."""
        e = object.__new__(ExactIndex)
        e.ids, e.uris, e.cats, e.mat, e.vecs = self.ids[:n], self.uris[:n], self.cats[:n], self.mat[:n], self.vecs[:n]
        e.low_precision, e._low_mat = self.low_precision, None
        e.slices = {c: (lo, min(hi, n)) for c, (lo, hi) in self.slices.items() if lo < n}
        e.positions = {}
        return e

    @classmethod
    def load(cls, table, dim: int) -> ExactIndex:
        """Two scans: the small columns first (to order rows by category), then the vectors batch by batch
        straight into their sorted place in one preallocated array, so loading peaks at ~1x the matrix."""
        meta = table.search().select(["id", "uri", "category"]).limit(None).to_arrow()
        n = meta.num_rows
        cats = np.asarray(meta.column("category").to_pylist(), dtype=object)
        order = np.argsort(np.asarray([c if c is not None else "" for c in cats], dtype=object),
                           kind="stable")  # sorted position -> table position
        dest = np.empty(n, np.int64)
        dest[order] = np.arange(n)
        vecs = np.empty((n, dim), np.float32)
        at = 0
        for b in table.search().select(["vector"]).limit(None).to_batches(65536):
            m = b.num_rows
            if at + m > n:
                break
            vecs[dest[at:at + m]] = b.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(m, dim)
            at += m
        if at != n:
            raise TableChanged(f"table changed while loading ({at} vectors read for {n} rows): search again")
        ids, uris = (np.asarray(meta.column(c).to_pylist(), dtype=object)[order] for c in ("id", "uri"))
        meta = None
        pa.default_memory_pool().release_unused()  # the scan buffers: ~50 MB per 100k rows otherwise kept
        return cls(ids, uris, cats[order], vecs)

    def search(self, queries: np.ndarray, k: int, excl: list[set[str]], cats: list[str | None]) -> list[list[Hit]]:
        """Exact top-k per query: one matmul per category group, exclusions by position, partial top-k. Above
        LOW_PRECISION_MIN_ROWS rows a group is ranked in bf16 first and its best k + RERANK candidates re-ranked
        in float32: the same hits and similarities as float32 throughout, at about half the memory traffic."""
        import torch

        results: list[list[Hit]] = [[] for _ in queries]
        for cat, qidx in groups(cats).items():
            lo, hi = (0, len(self.ids)) if cat is None else self.slices.get(cat, (0, 0))
            if hi == lo:
                continue
            kk = min(k, hi - lo)
            step = max(1, self.MAX_SCORES // (hi - lo))
            low = hi - lo >= self.LOW_PRECISION_MIN_ROWS and self.low_precision is not None
            for chunk in chunks(qidx, step):
                qs = queries[chunk]
                if low:
                    sims = (torch.from_numpy(qs).to(self.low_precision) @ self._low()[lo:hi].T).float()
                else:
                    # numpy's OpenBLAS beat torch's CPU matmul at every batch size measured (100k x 1280, 2 cores):
                    # ~20 vs ~41 ms for one query in the (rows x dim) @ (dim x q) orientation, ~570 vs ~450 q/s at 256.
                    mat = self.mat[lo:hi]
                    sims = torch.from_numpy(mat @ qs.T).T if len(chunk) <= 16 else torch.from_numpy(qs @ mat.T)
                r, c = [], []
                for row, qi in enumerate(chunk):
                    for i in excl[qi]:
                        for p in self.positions.get(i, ()):
                            if lo <= p < hi:
                                r.append(row)
                                c.append(p - lo)
                if r:
                    sims[r, c] = -torch.inf
                if low:  # candidates in bf16, their similarities again in float32, then the k best of those
                    _, cand = torch.topk(sims, min(hi - lo, kk + self.RERANK), dim=1)
                    exact = torch.einsum("qd,qcd->qc", torch.from_numpy(qs), self.vecs[lo:hi][cand])
                    exact[torch.gather(sims, 1, cand) == -torch.inf] = -torch.inf
                    vals, pos = torch.topk(exact, kk, dim=1)
                    idx = torch.gather(cand, 1, pos)
                else:
                    vals, idx = torch.topk(sims, kk, dim=1)
                vals, idx = vals.numpy(), idx.numpy()
                # topk leaves the order of equal scores open: break ties by row position, deterministically.
                o = np.lexsort((idx, -vals), axis=1)
                vals, idx = np.take_along_axis(vals, o, 1), np.take_along_axis(idx, o, 1) + lo
                for row, qi in enumerate(chunk):
                    results[qi] = [Hit(self.ids[j], self.uris[j], self.cats[j], float(v))
                                   for v, j in zip(vals[row], idx[row]) if v != -np.inf]
        return results

    def _low(self):
        """The matrix in low precision (made on first use: half the float32 matrix's memory)."""
        if self._low_mat is None:
            self._low_mat = self.vecs.to(self.low_precision)
        return self._low_mat


def groups(cats: list[str | None]) -> dict[str | None, list[int]]:
    """Query positions per category, in first-seen order: one batched search per group."""
    out: dict[str | None, list[int]] = {}
    for i, c in enumerate(cats):
        out.setdefault(c, []).append(i)
    return out


def as_set(e) -> set[str]:
    if e is None:
        return set()
    if isinstance(e, str):
        return {e}
    return set(e)
