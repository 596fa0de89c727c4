"""Enhance a batch of archive photos end to end: read -> decode -> embed -> retrieve -> restore -> write.

`EnhanceWorker` holds the loaded encoder, gallery and generator; the Ray actor in tasks/ is a thin
shell around it, and a notebook can use it directly:

    w = EnhanceWorker(EnhanceConfig(generator="realesrgan", db="refs.lance"))
    rows = w.process(items, out="out/", shard_id="s0", run_id="r0")

Every input yields exactly one manifest row; a bad input yields a row with status "error" and the
reason, never an exception that would lose the rest of the batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from rasr import catalog, images, storage
from rasr.catalog import Item
from rasr.manifest import empty_row

REF_MAX_SIDE = 1024  # references are resized to the model input anyway; bound their memory


@dataclass
class EnhanceConfig:
    """Everything that decides what an enhance run produces (hashed into config_hash)."""

    generator: str = "realesrgan"
    generator_weights: str | None = None
    generator_options: dict = field(default_factory=dict)   # osediff_weights, refdsr_weights, fusion_scale...
    db: str | None = None            # gallery LanceDB; None = no retrieval
    table: str | None = None
    encoder_weights: str | None = None
    top_k: int = 1
    min_similarity: float = 0.0      # below it the generator runs without a reference
    category_filter: bool = False    # only references of the input's folder category
    tile: int = 256                  # LR tile size for pixel tiling (0 = off)
    overlap: int = 32
    color_fix: str = "none"
    output_format: str = "png"
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    dtype: str = "fp32"
    tagger: str = "category"
    device: str | None = None        # not hashed: the same output on any device
    batch_size: int = 4              # not hashed

    def identity(self) -> dict:
        d = asdict(self)
        for k in ("device", "batch_size", "db"):
            d.pop(k)
        d["db"] = storage.redact(self.db) if self.db else None
        return d

    def hash(self) -> str:
        return catalog.config_hash(self.identity())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def input_category(relpath: str) -> str | None:
    parts = relpath.split("/")
    return parts[0] if len(parts) > 1 else None


class EnhanceWorker:
    """Loads the models once; `process` turns a list of inputs into outputs + manifest rows."""

    def __init__(self, cfg: EnhanceConfig):
        from rasr.generators import Restorer, load_generator

        self.cfg = cfg
        self.cfg_hash = cfg.hash()
        self.gallery = None
        self.encoder = None
        if cfg.db:
            from rasr.encoders import load_encoder
            from rasr.gallery import Gallery

            self.gallery = Gallery.open(cfg.db, cfg.table)
            self.encoder = load_encoder(self.gallery.encoder, weights=cfg.encoder_weights, device=cfg.device)
        options = dict(cfg.generator_options)
        if cfg.generator in ("osediff", "refdsr"):
            options.setdefault("tagger", "null" if cfg.tagger == "none" else cfg.tagger)
        self.generator = load_generator(cfg.generator, weights=cfg.generator_weights, device=cfg.device,
                                        dtype=cfg.dtype, **options)
        if self.generator.uses_reference and self.gallery is None:
            raise ValueError(f"generator {cfg.generator!r} uses references: pass --db GALLERY_DB")
        self.restorer = Restorer(self.generator, tile=cfg.tile, overlap=cfg.overlap, color_fix=cfg.color_fix,
                                 batch_size=cfg.batch_size)
        self._tagger = getattr(self.generator, "tagger", None)  # text-conditioned generators carry one
        self._refs: OrderedDict[str, np.ndarray] = OrderedDict()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    # ---- helpers -------------------------------------------------------------------------------
    def _reference(self, uri: str) -> np.ndarray:
        if uri not in self._refs:
            rgb = images.decode_image(storage.read_bytes(uri), max_pixels=1 << 62).rgb
            h, w = rgb.shape[:2]
            if max(h, w) > REF_MAX_SIDE:
                from PIL import Image

                s = REF_MAX_SIDE / max(h, w)
                rgb = np.asarray(Image.fromarray(rgb).resize((round(w * s), round(h * s)), Image.BICUBIC))
            self._refs[uri] = rgb
            while len(self._refs) > 64:
                self._refs.popitem(last=False)
        self._refs.move_to_end(uri)
        return self._refs[uri]

    def _row(self, item: Item, shard_id: str, run_id: str) -> dict:
        row = empty_row()
        row.update(source_uri=item.uri, relpath=item.relpath, generator=self.generator.name,
                   weights_id=self.generator.weights_id, config_hash=self.cfg_hash, shard_id=shard_id,
                   run_id=run_id, encoder=self.encoder.id if self.encoder else None, worker=self.worker_id,
                   fusion_scale=self.generator.info().get("fusion_scale"))
        return row

    # ---- the work ------------------------------------------------------------------------------
    def process(self, items: list[Item], out: str, shard_id: str, run_id: str) -> list[dict]:
        """Enhance `items`, write their outputs under `out`, return one manifest row per item."""
        rows, live = [], []  # live: (row, decoded) for inputs that decoded fine
        for item in items:
            t0 = time.perf_counter()
            row = self._row(item, shard_id, run_id)
            rows.append(row)
            if not item.is_image:
                row.update(status="skipped", error=f"not an image file extension ({os.path.splitext(item.relpath)[1] or 'none'})")
                row["processed_at"] = _now()
                continue
            try:
                data = storage.read_bytes(item.uri)
            except Exception as e:  # noqa: BLE001 - storage errors become the row's reason
                row.update(status="error", error=f"cannot read: {storage.redact(e)}", processed_at=_now())
                continue
            t1 = time.perf_counter()
            row["sha256"] = sha256(data)
            try:
                dec = images.decode_image(data, max_pixels=self.cfg.max_pixels)
            except images.ImageError as e:
                row.update(status="error", error=str(e), processed_at=_now())
                row["timings_ms"].update(read=(t1 - t0) * 1e3)
                continue
            t2 = time.perf_counter()
            row.update(width=dec.width, height=dec.height, source_mode=dec.source_mode, alpha=dec.alpha is not None)
            row["timings_ms"].update(read=(t1 - t0) * 1e3, decode=(t2 - t1) * 1e3)
            live.append((row, dec))
        if live:
            self._retrieve(live)
            self._restore_and_write(live, out)
        return rows

    def _retrieve(self, live: list[tuple[dict, images.Decoded]]) -> None:
        if self.gallery is None:
            return
        t0 = time.perf_counter()
        vecs = self.encoder.encode([dec.rgb for _, dec in live])
        t1 = time.perf_counter()
        for (row, _), vec in zip(live, vecs):
            category = input_category(row["relpath"]) if self.cfg.category_filter else None
            hits = self.gallery.search(vec[None], k=self.cfg.top_k, exclude_ids=[row["sha256"]], category=category)[0]
            row.update(ref_ids=[h.id for h in hits], ref_uris=[h.uri for h in hits],
                       ref_similarities=[h.similarity for h in hits], ref_categories=[h.category for h in hits])
            row["ref_used"] = bool(hits) and self.generator.uses_reference and hits[0].similarity >= self.cfg.min_similarity
        t2 = time.perf_counter()
        for row, _ in live:
            row["timings_ms"].update(embed=(t1 - t0) * 1e3 / len(live), retrieve=(t2 - t1) * 1e3 / len(live))

    def _prompt(self, row: dict, dec: images.Decoded, ref: np.ndarray | None) -> str:
        if self._tagger is None:
            return ""
        from rasr.tagger import build_prompt

        ref_category = row["ref_categories"][0] if row["ref_used"] else None
        lr_tags = self._tagger.tags([dec.rgb], categories=[None])[0]
        ref_tags = self._tagger.tags([ref], categories=[ref_category])[0] if ref is not None else ""
        row["tagger"] = self._tagger.name
        return build_prompt(lr_tags, ref_tags)

    def _restore_and_write(self, live: list[tuple[dict, images.Decoded]], out: str) -> None:
        refs, prompts, ok = [], [], []
        for row, dec in live:
            try:
                ref = self._reference(row["ref_uris"][0]) if row["ref_used"] else None
            except Exception as e:  # noqa: BLE001 - a broken reference file: fall back to no reference
                ref, row["ref_used"] = None, False
                row["error"] = f"reference unreadable, ran without: {storage.redact(e)}"
            refs.append(ref)
            prompts.append(self._prompt(row, dec, ref))
            row["prompt"] = prompts[-1]
            ok.append((row, dec))
        t0 = time.perf_counter()
        try:
            outs = self.restorer.restore([d.rgb for _, d in ok], refs, prompts)
        except Exception:  # noqa: BLE001 - isolate the failing input(s) by retrying one at a time
            outs = []
            for (row, dec), ref, prompt in zip(ok, refs, prompts):
                try:
                    outs.append(self.restorer.restore([dec.rgb], [ref], [prompt])[0])
                except Exception as e:  # noqa: BLE001
                    row.update(status="error", error=f"generator failed: {e.__class__.__name__}: {e}")
                    outs.append(None)
        t_restore = (time.perf_counter() - t0) * 1e3
        pixels = sum(d.width * d.height for _, d in ok) or 1
        for (row, dec), hr in zip(ok, outs):
            row["timings_ms"]["restore"] = t_restore * dec.width * dec.height / pixels
            if hr is None:
                row["processed_at"] = _now()
                continue
            try:
                self._write(row, dec, hr, out)
                row["status"] = "ok"
            except Exception as e:  # noqa: BLE001
                row.update(status="error", error=f"cannot write output: {storage.redact(e)}")
            row["processed_at"] = _now()
            t = row["timings_ms"]
            t["total"] = sum(v for k, v in t.items() if k != "total")

    def _write(self, row: dict, dec: images.Decoded, hr: np.ndarray, out: str) -> None:
        t0 = time.perf_counter()
        h, w = hr.shape[:2]
        alpha = images.resize_alpha(dec.alpha, w, h) if dec.alpha is not None else None
        data = images.encode_image(hr, self.cfg.output_format, alpha=alpha, grayscale=dec.grayscale)
        t1 = time.perf_counter()
        uri = catalog.output_uri(out, row["relpath"], self.cfg.output_format)
        storage.write_bytes(uri, data)
        t2 = time.perf_counter()
        row.update(output_uri=uri, out_width=w, out_height=h)
        row["timings_ms"].update(encode=(t1 - t0) * 1e3, write=(t2 - t1) * 1e3)
