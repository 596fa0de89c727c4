"""Enhance a batch of archive photos end to end: read -> decode -> embed -> retrieve -> restore -> write.

`EnhanceWorker` holds the loaded encoder, gallery and generator; the Ray actor in tasks/ is a thin
shell around it, and a notebook can use it directly:

    w = EnhanceWorker(EnhanceConfig(generator="realesrgan", db="refs.lance"))   # rasr/restoration/enhance_run.py
    rows = w.process(items, out="out/", shard_id="s0", run_id="r0")

Every input yields exactly one manifest row; a bad input yields a row with status "error" and the
reason, never an exception that would lose the rest of the batch.

`process` is a pipeline, so the model never waits for the CPU work around it:

    reader threads      read + sha256 + decode the next inputs       (bounded look-ahead)
    prepare thread      embed + retrieve + load references + prompts  (batch i+1)
    calling thread      restore on the generator's device             (batch i)
    writer threads      encode + write the finished outputs           (bounded queue)

Pillow and zlib release the GIL, so the threads overlap on real cores. Inputs of one size are
batched together; memory holds at most `lookahead` decoded inputs plus the batches in flight.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

import rasr

from rasr import catalog, faults, storage
from rasr.restoration import images, metadata
from rasr.catalog import Item
from rasr.restoration.enhance_run import EnhanceConfig
from rasr.manifest import empty_row
from rasr.retrieval.gallery import content_id

REF_MAX_SIDE = 1024  # references are resized to the model input anyway; bound their memory




def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Inline:
    """An executor that runs each call at once in the caller's thread (`overlap=False`)."""

    def submit(self, fn, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to whoever reads the future, as a pool would
            fut.set_exception(e)
        return fut

    def shutdown(self, wait: bool = True) -> None:
        pass


class EnhanceWorker:
    """Loads the models once; `process` turns a list of inputs into outputs + manifest rows.

    io_threads: reader and writer threads each (default: from the CPUs this process may use).
    overlap=False runs every stage in the calling thread, one after the other (same rows, same bytes)."""

    def __init__(self, cfg: EnhanceConfig, io_threads: int | None = None, overlap: bool = True):
        from rasr.restoration.generators import Restorer, load_generator

        self.cfg = cfg
        self.cfg_hash = cfg.hash()
        # what an output without transferred detail carries: the hash of the run that makes it without transfer, so
        # that it is byte for byte the output of --reference-transfer off (and of runs before it)
        self._plain_hash = dataclasses.replace(cfg, reference_transfer="off").hash()
        self.encoding = cfg.encoding()
        options = dict(cfg.generator_options)
        if cfg.generator in ("osediff", "refdsr"):
            options.setdefault("tagger", cfg.tagger)
        self.generator = load_generator(cfg.generator, weights=cfg.generator_weights, device=cfg.device,
                                        dtype=cfg.dtype, **options)
        self.gallery = None
        self.encoder = None
        if cfg.db:
            from rasr.retrieval.search import Retriever

            # on the generator's device: on a GPU worker the CPU is busy enough decoding and encoding
            retriever = Retriever(cfg.db, cfg.table, cfg.encoder_weights, device=str(self.generator.device))
            self.gallery, self.encoder = retriever.gallery, retriever.encoder
        if self.generator.uses_reference and self.gallery is None:
            raise ValueError(f"generator {cfg.generator!r} uses references: pass --db GALLERY_DB")
        self.restorer = Restorer(self.generator, tile=cfg.tile, overlap=cfg.overlap, color_fix=cfg.color_fix,
                                 batch_size=cfg.batch_size)
        self._tagger = getattr(self.generator, "tagger", None)  # text-conditioned generators carry one
        self._signer = None
        cert, key = cfg.c2pa_cert or os.environ.get("RASR_C2PA_CERT"), cfg.c2pa_key or os.environ.get("RASR_C2PA_KEY")
        if cert or key:  # a deployment passes them through the environment
            from rasr.restoration.credentials import Signer

            self._signer = Signer(cert or "", key or "")
        self._gallery_version = self.gallery.version() if self.gallery else None  # the one this worker searches
        files = getattr(self.generator, "weights_files", None)
        self._weights_files = json.dumps(files, sort_keys=True) if files else None
        self._refs = images.DecodedCache(max_items=64, max_side=REF_MAX_SIDE)
        self._features = None  # same-scene verification (rasr/restoration/transfer.py): gallery features, cached beside it
        if self.gallery is not None and cfg.reference_transfer == "auto":
            from rasr.restoration.transfer import FeatureCache

            self._features = FeatureCache(cfg.db)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.batch_size = max(1, cfg.batch_size)
        n = io_threads or default_io_threads()
        self.lookahead = self.batch_size + n       # inputs being read ahead of the model, at most
        self.max_writes = 2 * self.batch_size + n  # finished outputs waiting to be written, at most
        if overlap:
            self._readers = ThreadPoolExecutor(n, thread_name_prefix="rasr-read")
            self._writers = ThreadPoolExecutor(n, thread_name_prefix="rasr-write")
            self._preparer = ThreadPoolExecutor(1, thread_name_prefix="rasr-prepare")
        else:
            self._readers = self._writers = self._preparer = _Inline()
        # concurrent process() calls (a threaded Ray actor) share one encoder and one generator
        self._prepare_lock = threading.Lock()
        self._model_lock = threading.Lock()

    def close(self) -> None:
        for pool in (self._readers, self._writers, self._preparer):
            pool.shutdown(wait=True)

    # ---- the work ------------------------------------------------------------------------------
    def process(self, items: list[Item], out: str, shard_id: str, run_id: str) -> list[dict]:
        """Enhance `items`, write their outputs under `out`, return one manifest row per item (in order)."""
        rows = [self._row(item, shard_id, run_id) for item in items]
        writes: deque[Future] = deque()
        prepared: deque[tuple[list, Future]] = deque()  # batches whose retrieval runs ahead of the model
        for batch in self._batches(items, rows):
            prepared.append((batch, self._preparer.submit(self._prepare, batch)))
            if len(prepared) > 1:
                self._restore_and_write(*prepared.popleft(), out, writes)
        while prepared:
            self._restore_and_write(*prepared.popleft(), out, writes)
        for fut in writes:
            fut.result()
        for row in rows:
            if row["status"] == "error":
                self._drop_stale_output(row, out)
        return rows

    def _drop_stale_output(self, row: dict, out: str) -> None:
        """An input that failed this time must not keep an output made from an earlier version of it beside
        its error row: remove it, or (when it cannot be removed) say in the row that it is stale."""
        uri = catalog.output_uri(out, row["relpath"], self.encoding.extension)
        try:
            if not storage.exists(uri):
                return
            storage.remove(uri)
            _note(row, "the output of an earlier version of this input was removed")
        except Exception as e:  # noqa: BLE001 - cannot remove (immutable, permissions): the row says so
            row["error"] = (f"{row['error']}; STALE: {storage.redact(uri)} holds the output of an earlier version of "
                            f"this input and could not be removed ({storage.redact(e)})")

    def _batches(self, items: list[Item], rows: list[dict]):
        """Decoded inputs in batches of one size: full batches as soon as they fill, others when the
        look-ahead is used up. Reading runs `lookahead` inputs ahead on the reader threads."""
        todo = iter(zip(items, rows))
        reading: deque[Future] = deque()
        held: dict[tuple, list] = {}  # (h, w) -> [(row, decoded)] waiting for a full batch
        hold = 2 * self.batch_size    # mixed sizes: how many to keep looking for same-size partners

        def read_ahead():
            while len(reading) < self.lookahead and (nxt := next(todo, None)) is not None:
                reading.append(self._readers.submit(self._load, *nxt))

        read_ahead()
        while reading:
            loaded = reading.popleft().result()
            read_ahead()
            if loaded is None:
                continue
            size = loaded[1].rgb.shape[:2]
            held.setdefault(size, []).append(loaded)
            if len(held[size]) >= self.batch_size:
                yield held.pop(size)
            elif sum(map(len, held.values())) >= hold:
                yield held.pop(max(held, key=lambda k: len(held[k])))
        yield from held.values()

    def _load(self, item: Item, row: dict) -> tuple[dict, images.Decoded] | None:
        """Read + hash + decode one input; None (with the row filled in) when it cannot go on."""
        t0 = time.perf_counter()
        if item.status:  # decided when listing: hidden, dangling symlink, symlink loop...
            row.update(status=item.status, error=item.reason, processed_at=_now())
            return None
        if not item.is_image:
            row.update(status="skipped", processed_at=_now(),
                       error=f"not an image file extension ({os.path.splitext(item.relpath)[1] or 'none'})")
            return None
        try:
            data = storage.read_bytes(item.uri)
        except Exception as e:  # a file's own problem becomes its row's reason
            if not storage.is_about_the_file(e):
                raise  # the store is unavailable: fail the batch (its shard is redone), record no verdict
            row.update(status="error", error=f"cannot read: {storage.redact(e)}", processed_at=_now(), retry=True)
            return None
        t1 = time.perf_counter()
        row["sha256"] = content_id(data)
        row["timings_ms"]["read"] = (t1 - t0) * 1e3
        try:
            faults.point("decode")
            dec = images.decode_image(data, max_pixels=self.cfg.max_pixels, name=item.relpath)
        except images.ImageError as e:
            row.update(status="error", error=str(e), processed_at=_now())
            return None
        row.update(width=dec.width, height=dec.height, source_mode=dec.source_mode, alpha=dec.alpha is not None,
                   frames=dec.frames)
        dec.meta = metadata.read_source(data, dec.exif)  # XMP, IPTC: carried to the output
        dec.source = data if self._signer is not None else None  # the C2PA ingredient
        for note in dec.notes:
            _note(row, note)
        row["timings_ms"]["decode"] = (time.perf_counter() - t1) * 1e3
        return row, dec

    def _prepare(self, batch: list[tuple[dict, images.Decoded]]) -> tuple[list, list[str], list]:
        """Embed + retrieve (one search for the batch), then each input's reference image, prompt and same-scene
        match (or None)."""
        with self._prepare_lock:
            self._retrieve(batch)
            matches = [self._verify(row, dec) for row, dec in batch]
            refs, prompts = [], []
            for row, dec in batch:
                try:
                    ref = self._refs.get(row["ref_uris"][0]) if row["ref_used"] else None
                except Exception as e:  # noqa: BLE001 - a broken reference file: fall back to no reference
                    ref, row["ref_used"] = None, False
                    row["error"] = f"reference unreadable, ran without: {storage.redact(e)}"
                refs.append(ref)
                prompts.append(self._prompt(row, dec, ref))
                row["prompt"] = prompts[-1]
            return refs, prompts, matches

    def _verify(self, row: dict, dec: images.Decoded):
        """The retrieved candidate showing the same scene (rasr/restoration/transfer.py), or None; the row says which
        was found."""
        if not row["ref_ids"]:
            row["ref_match"] = "none" if self.gallery is not None else None
            return None
        row["ref_match"] = "semantic"
        if self._features is None:
            return None
        from rasr.restoration import transfer

        t0 = time.perf_counter()
        candidates = []
        for rid, uri, sim in zip(row["ref_ids"], row["ref_uris"], row["ref_similarities"]):
            if sim < self.cfg.min_similarity:
                continue
            try:
                candidates.append((rid, uri, self._features.get(rid, uri)))
            except Exception as e:  # noqa: BLE001 - an unreadable reference is not a candidate
                _note(row, f"reference {storage.redact(uri)} not verified: {storage.redact(e)}")
        match, inliers = None, 0
        if candidates:
            try:
                match, inliers = transfer.verify(transfer.query_features(dec.rgb, self.restorer.scale), candidates)
            except Exception as e:  # noqa: BLE001 - an input verification cannot handle is enhanced without
                _note(row, f"same-scene verification failed, none used: {e.__class__.__name__}: {storage.redact(e)}")
        row["ref_inliers"] = inliers
        row["timings_ms"]["retrieve"] += (time.perf_counter() - t0) * 1e3
        if match is not None:
            row.update(ref_match="same_scene", ref_matched_id=match.ref_id, ref_inliers=match.inliers)
        return match

    def _retrieve(self, batch: list[tuple[dict, images.Decoded]]) -> None:
        if self.gallery is None:
            return
        t0 = time.perf_counter()
        vecs = self.encoder.encode([dec.rgb for _, dec in batch])
        t1 = time.perf_counter()
        # None, not "" (which would match only top-level references): a top-level input searches all categories
        categories = [(catalog.category_of(row["relpath"]) or None) if self.cfg.category_filter else None
                      for row, _ in batch]
        found = self.gallery.search(vecs, k=self.cfg.top_k, exclude_ids=[row["sha256"] for row, _ in batch],
                                    category=categories)
        t2 = time.perf_counter()
        for (row, _), hits in zip(batch, found):
            row.update(ref_ids=[h.id for h in hits], ref_uris=[h.uri for h in hits],
                       ref_similarities=[h.similarity for h in hits], ref_categories=[h.category for h in hits])
            row["ref_used"] = bool(hits) and self.generator.uses_reference and hits[0].similarity >= self.cfg.min_similarity
            row["timings_ms"].update(embed=(t1 - t0) * 1e3 / len(batch), retrieve=(t2 - t1) * 1e3 / len(batch))

    def _restore_and_write(self, batch: list[tuple[dict, images.Decoded]], prepared: Future, out: str,
                           writes: deque[Future]) -> None:
        refs, prompts, matches = prepared.result()
        lrs = [dec.pixels for _, dec in batch]  # 16 bits where the file has them
        t0 = time.perf_counter()
        with self._model_lock:
            try:
                outs = self._restore_halving([row for row, _ in batch], lrs, refs, prompts)
            except Exception:  # noqa: BLE001 - isolate the failing input(s) by retrying one at a time
                outs = []
                for (row, _), lr, ref, prompt in zip(batch, lrs, refs, prompts):
                    try:
                        outs.append(self.restorer.restore([lr], [ref], [prompt])[0])
                    except Exception as e:  # noqa: BLE001 - the input the generator fails on gets the reason
                        row.update(status="error", error=f"generator failed: {e.__class__.__name__}: {e}",
                                   retry=is_out_of_memory(e))  # memory can be there next time; a bug stays
                        outs.append(None)
        t_restore = (time.perf_counter() - t0) * 1e3
        pixels = sum(d.width * d.height for _, d in batch) or 1
        for (row, dec), hr, match in zip(batch, outs, matches):
            row["timings_ms"]["restore"] = t_restore * dec.width * dec.height / pixels
            if hr is None:
                row["processed_at"] = _now()
                continue
            while len(writes) >= self.max_writes:  # bounded: a slow store slows the model, not memory
                writes.popleft().result()
            writes.append(self._writers.submit(self._write, row, dec, hr, out, match))

    def _restore_halving(self, rows: list[dict], lrs: list, refs: list, prompts: list) -> list:
        """Restore a batch; on out-of-memory, restore each half on its own (recursively) and say so."""
        try:
            faults.point("restore")
            return self.restorer.restore(lrs, refs, prompts)
        except Exception as e:
            if len(lrs) < 2 or not is_out_of_memory(e):
                raise
        free_accelerator_memory()
        h = len(lrs) // 2
        for row in rows:
            _note(row, f"out of memory in a batch of {len(lrs)}: retried in batches of {h} and {len(lrs) - h}")
        return (self._restore_halving(rows[:h], lrs[:h], refs[:h], prompts[:h])
                + self._restore_halving(rows[h:], lrs[h:], refs[h:], prompts[h:]))

    def _write(self, row: dict, dec: images.Decoded, hr: np.ndarray, out: str, match=None) -> None:
        if match is not None:
            hr = self._transfer(row, dec, hr, out, match)
        t0 = time.perf_counter()
        try:
            h, w = hr.shape[:2]
            alpha = images.resize_alpha(dec.alpha, w, h) if dec.alpha is not None else None
            data, facts = self._derivative(row, dec, hr, alpha)
            t1 = time.perf_counter()
            uri = catalog.output_uri(out, row["relpath"], self.encoding.extension)
            faults.point("image-write")
            storage.write_bytes(uri, data, catalog.temp_dir(out))
            row.update(output_uri=uri, out_width=w, out_height=h, status="ok",
                       output_encoding=self.encoding.describe(alpha is not None), **facts)
            row["timings_ms"].update(encode=(t1 - t0) * 1e3, write=(time.perf_counter() - t1) * 1e3)
        except Exception as e:
            if not storage.is_about_the_file(e) and not isinstance(e, (ValueError, images.ImageError)):
                raise  # the store is unavailable: fail the batch (its shard is redone)
            # a permission or a full disk can pass (retried by the next run); an image the format cannot hold stays
            row.update(status="error", error=f"cannot write output: {storage.redact(e)}",
                       retry=not isinstance(e, (ValueError, images.ImageError)))
        row["processed_at"] = _now()
        t = row["timings_ms"]
        t["total"] = sum(v for k, v in t.items() if k != "total")

    def _transfer(self, row: dict, dec: images.Decoded, hr: np.ndarray, out: str, match) -> np.ndarray:
        """The same-scene reference's detail in `hr` (rasr/restoration/transfer.py), and a preview of it for the results page;
        on failure `hr` as the generator made it, with the reason in the row."""
        from rasr.restoration import transfer
        from rasr.results import results_page

        t0 = time.perf_counter()
        try:
            ref = images.decode_image(storage.read_bytes(match.ref_uri), max_pixels=1 << 62).rgb
            faults.point("transfer")
            done = transfer.transfer(hr, dec.pixels, ref, match.homography)
        except Exception as e:  # noqa: BLE001 - the generator's output stands; the row says why nothing was taken
            row["ref_match"] = "semantic"
            _note(row, f"same-scene reference {match.ref_id[:12]} not transferred: {e.__class__.__name__}: "
                       f"{storage.redact(e)}")
            return hr
        row["ref_coverage"] = done.coverage
        row["timings_ms"]["restore"] += (time.perf_counter() - t0) * 1e3
        if not (done.mask > 0).any():
            row["ref_match"] = "semantic"
            _note(row, f"same-scene reference {match.ref_id[:12]} verified ({match.inliers} inliers) but nowhere "
                       f"confident after alignment: not used")
            return hr
        row["ref_used"] = True
        _note(row, f"detail from same-scene reference {match.ref_id[:12]} ({match.inliers} inliers) on "
                   f"{done.coverage:.0%} of the output")
        try:
            preview = results_page.transfer_preview(done.aligned, done.mask)
            storage.write_bytes(storage.join(out, results_page.REPORT_DIR, results_page.transfer_path(row)), preview,
                                catalog.temp_dir(out))
        except Exception as e:  # noqa: BLE001 - a preview is not worth the output
            _note(row, f"no transfer preview: {storage.redact(e)}")
        return done.pixels

    def _used_refs(self, row: dict) -> list[tuple[str, str]]:
        """(id, uri) of the references whose pixels are in the output: the generator's and the transferred one."""
        used = []
        if row["ref_used"] and self.generator.uses_reference:
            used.append((row["ref_ids"][0], row["ref_uris"][0]))
        if row.get("ref_matched_id") and row["ref_match"] == "same_scene":
            uri = row["ref_uris"][row["ref_ids"].index(row["ref_matched_id"])]
            if (row["ref_matched_id"], uri) not in used:
                used.append((row["ref_matched_id"], uri))
        return used

    def _derivative(self, row: dict, dec: images.Decoded, hr: np.ndarray, alpha) -> tuple[bytes, dict]:
        """The output file: pixels in the input's colour (or sRGB), its metadata and the provenance
        (rasr/restoration/metadata.py), a C2PA manifest when a certificate is given. Returns (bytes, manifest facts)."""
        h, w = hr.shape[:2]
        cfg, ext = self.cfg, self.encoding.extension
        icc, color, grayscale = dec.icc, dec.color, dec.grayscale
        if cfg.output_profile == "srgb" and icc and "converted to sRGB" not in color:
            hr, icc = images.to_srgb(hr, icc, grayscale), images.srgb_profile()
            color = f"converted to sRGB from {images.profile_name(dec.icc)}"
            grayscale = False
        carried = []
        exif = None
        if dec.exif and not cfg.strip_metadata:
            exif = metadata.output_exif(dec.exif, w, h, strip_gps=cfg.strip_gps)
            carried.append("exif")
        if icc:
            carried.insert(0, "icc")
        data = images.encode_image(hr, self.encoding, alpha=alpha, grayscale=grayscale, icc=icc, exif=exif)
        deep = hr.dtype == np.uint16 and self.encoding.format in ("png", "tiff")
        if hr.dtype == np.uint16 and not deep:
            _note(row, f"16-bit input written at 8 bits ({self.encoding.format} holds no more): use --format png or tiff")
        src = None if cfg.strip_metadata else dec.meta
        prov = metadata.Provenance(
            generator=self.generator.name, weights_id=self.generator.weights_id,
            config_hash=self.cfg_hash if row["ref_match"] == "same_scene" else self._plain_hash,
            source_path=row["relpath"], source_sha256=row["sha256"],  # relative: true wherever the archive moves
            references=[rid for rid, _ in self._used_refs(row)], software=f"rasr {rasr.__version__}",
            composed_of_captures=row["ref_match"] == "same_scene")
        data = metadata.add_xmp_iptc(data, ext, src, prov, strip_gps=cfg.strip_gps)
        if src is not None:
            carried += [k for k in ("xmp", "iptc") if k in src.kinds and (k != "iptc" or ext in ("jpg", "jpeg"))]
        carried.append("provenance")
        if self._signer is not None:
            refs = [(uri, storage.read_bytes(uri)) for _, uri in self._used_refs(row)]
            data = self._signer.sign(data, ext, prov, dec.source, row["relpath"], refs)
            carried.append("c2pa")
        return data, {"carried": " ".join(carried), "color": color, "bit_depth": 16 if deep else 8}

    # ---- helpers -------------------------------------------------------------------------------
    def _row(self, item: Item, shard_id: str, run_id: str) -> dict:
        row = empty_row()
        row.update(source_uri=item.uri, relpath=item.relpath, generator=self.generator.name,
                   weights_id=self.generator.weights_id, config_hash=self.cfg_hash, shard_id=shard_id,
                   run_id=run_id, encoder=self.encoder.id if self.encoder else None, worker=self.worker_id,
                   fusion_scale=self.generator.info().get("fusion_scale"), weights_files=self._weights_files,
                   gallery_table=self.gallery.name if self.gallery else None,
                   gallery_version=self._gallery_version)
        return row

    def _prompt(self, row: dict, dec: images.Decoded, ref: np.ndarray | None) -> str:
        if self._tagger is None:
            return ""
        ref_category = row["ref_categories"][0] if row["ref_used"] else None
        row["tagger"] = self._tagger.name
        # the LR's own tags: for `category`, the input's folder (as a gallery photo's category is its folder)
        return self.generator.prompt_for(dec.rgb, catalog.category_of(row["relpath"]), ref, ref_category)


def _note(row: dict, text: str) -> None:
    row["notes"] = f"{row['notes']}; {text}" if row.get("notes") else text


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA/MPS/host out-of-memory, whichever library raised it."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_io_threads() -> int:
    """Reader/writer threads: twice the CPUs torch may use here (I/O waits and GIL-free codecs)."""
    import torch

    return max(2, min(16, 2 * torch.get_num_threads()))
