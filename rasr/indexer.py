"""Indexing a gallery: compare a listing with the table, embed only what is new or changed.

The category of a file is its first folder under the gallery root (`animals/cat1.jpg` -> animals).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rasr import images, storage
from rasr.catalog import Item
from rasr.encoders import Encoder


@dataclass
class IndexPlan:
    to_embed: list[Item]     # new files and files whose size/mtime changed
    to_delete: list[str]     # uris in the table whose files vanished
    unchanged: int


def category_of(relpath: str) -> str:
    parts = relpath.split("/")
    return parts[0] if len(parts) > 1 else ""


def plan_index(listing: list[Item], existing: dict[str, tuple[str, int, str]]) -> IndexPlan:
    """What a re-index must do, given the table's uri -> (id, size, mtime)."""
    images_only = [it for it in listing if it.is_image]
    current = {it.uri for it in images_only}
    to_embed = [it for it in images_only
                if it.uri not in existing or existing[it.uri][1:] != (it.size, it.mtime)]
    to_delete = sorted(u for u in existing if u not in current)
    return IndexPlan(to_embed, to_delete, len(images_only) - len(to_embed))


class Embedder:
    """Reads, decodes and embeds gallery files; bad files are reported, never fatal."""

    def __init__(self, encoder: Encoder, max_pixels: int = images.DEFAULT_MAX_PIXELS):
        self.encoder = encoder
        self.max_pixels = max_pixels

    def embed(self, items: list[Item]) -> tuple[list[dict], list[dict]]:
        """Rows for the gallery table, and {uri, error} records for files that could not be used."""
        rows, errors, decoded = [], [], []
        for it in items:
            try:
                data = storage.read_bytes(it.uri)
                dec = images.decode_image(data, max_pixels=self.max_pixels)
            except Exception as e:  # noqa: BLE001 - unreadable gallery files are skipped with a reason
                errors.append({"uri": it.uri, "error": storage.redact(str(e))})
                continue
            decoded.append(dec.rgb)
            rows.append({"id": hashlib.sha256(data).hexdigest(), "uri": it.uri, "relpath": it.relpath,
                         "category": category_of(it.relpath), "width": dec.width, "height": dec.height,
                         "size": it.size, "mtime": it.mtime, "encoder": self.encoder.id})
        vecs = self.encoder.encode(decoded)
        for row, vec in zip(rows, vecs):
            row["vector"] = vec
        return rows, errors
