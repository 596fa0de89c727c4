"""Evaluation of methods on an HR test set, one image at a time (the paper's Tables 1 and 5).

For each HR image: crop to a multiple of the scale -> LR by the seeded Real-ESRGAN degradation (or an
existing LR file) -> references per mode (retrieved | random | none | given) -> every method ->
metrics against the HR. Retrieval accuracy (top-1 category match) is recorded per encoder.

    w = EvalWorker(EvalConfig(methods=["bicubic", "realesrgan"], db="refs.lance"))
    tables = w.process(items, out="eval/", shard_id="s0", run_id="r0")   # {"manifest": rows, "retrieval": rows}
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rasr import catalog, storage
from rasr.restoration import images
from rasr.catalog import Item
from rasr.research.dataset import stable_seed
from rasr.restoration import colorfix
from rasr.research.metrics import METRICS, NIQE_MIN_SIZE, MetricSuite, ScoreConfig
from rasr.retrieval.gallery import content_id
from rasr.options import STRICT, GalleryOptions, Identity, RestorationOptions, option

REF_MODES = ("retrieved", "random", "none", "given")
TRANSFER_MODE = "transfer"  # a method's output followed by same-scene reference transfer (not a --ref-modes choice)
TRANSFER_TOP_K = 3          # retrieved candidates a transfer verifies
RETRIEVAL_DIR = "retrieval"
SCALE = 4

EVAL_SCHEMA = pa.schema(
    [pa.field("relpath", pa.string()), pa.field("source_uri", pa.string()), pa.field("category", pa.string()),
     pa.field("method", pa.string()), pa.field("ref_mode", pa.string()), pa.field("ref_id", pa.string()),
     pa.field("ref_uri", pa.string()), pa.field("ref_category", pa.string()),
     pa.field("ref_similarity", pa.float32()), pa.field("ref_match", pa.string()),
     pa.field("ref_coverage", pa.float32())]
    + [pa.field(m, pa.float64()) for m in METRICS]
    + [pa.field("restore_ms", pa.float32()), pa.field("metrics_ms", pa.float32()),
       pa.field("degradation", pa.string()), pa.field("seed", pa.int64()), pa.field("width", pa.int32()),
       pa.field("height", pa.int32()), pa.field("lr_uri", pa.string()), pa.field("sr_uri", pa.string()),
       pa.field("gt_uri", pa.string()), pa.field("weights_id", pa.string()), pa.field("status", pa.string()),
       pa.field("error", pa.string()), pa.field("shard_id", pa.string()), pa.field("run_id", pa.string()),
       pa.field("processed_at", pa.timestamp("us", tz="UTC"))])

RETRIEVAL_SCHEMA = pa.schema([
    pa.field("relpath", pa.string()), pa.field("category", pa.string()), pa.field("encoder", pa.string()),
    pa.field("top1_uri", pa.string()), pa.field("top1_category", pa.string()),
    pa.field("similarity", pa.float32()), pa.field("match", pa.bool_()), pa.field("run_id", pa.string())])


@dataclass
class EvalConfig(Identity, RestorationOptions, GalleryOptions, ScoreConfig):
    """What an evaluation run computes (hashed: a changed config re-evaluates) and how it is shown; the
    metrics and the PSNR/SSIM border are ScoreConfig's, the gallery (needed by retrieved/random references and
    Table 5) GalleryOptions', how the methods run RestorationOptions'."""

    __pydantic_config__ = STRICT
    CLI_HIDDEN = ("encoder_weights", "max_pixels", "batch_size")
    # where the inputs were read from (their contents are in pairs / lr_files), how the run is shown and sharded
    NOT_HASHED = ("device", "batch_size", "pairs_file", "lr_dir", "baseline", "examples", "shard_size")
    HASHED_WHEN_SET = {"encoder_weights": None}  # added after runs existed

    methods: list[str] = option(help="Methods: bicubic, realesrgan, osediff, refdsr (comma-separated).",
                                factory=lambda: ["bicubic", "realesrgan"])
    ref_modes: list[str] = option(help="References for reference-based methods: retrieved, random, none, given "
                                       "(comma-separated).", factory=lambda: ["retrieved"])
    encoders: list[str] = option(help="Extra retrieval encoders for Table 5, e.g. dinov2,clip,vgg16.", factory=list)
    table5_method: str | None = option(None, "Reference method to run with each encoder's references.")
    pairs_file: str | None = option(None, "CSV image,ref for the 'given' mode (as WR-SR pairs).", flags=("--pairs",))
    lr_dir: str | None = option(None, "Use these LR files (matched by relative path) instead of degrading.")
    pairs: dict[str, str] = option(help="relpath -> reference uri ('given' mode; read from pairs_file)",
                                   factory=dict, cli=False)
    lr_files: dict[str, str] = option(help="relpath -> existing LR uri (else degrade; matched in lr_dir)",
                                      factory=dict, cli=False)
    seed: int = option(0, "Degradation seed (per image: hash of seed + path).")
    crop: int = option(0, "Centre-crop HR images to CROP x CROP first (0 = whole image).", low=0)
    weights: dict[str, str] = option(help="Weights per method, e.g. realesrgan=/w/x4.pth (repeatable).", factory=dict,
                                     flags=("--method-weights", "--weights"), metavar="METHOD=REF")
    generator_options: dict = option(help="osediff_weights, refdsr_weights, fusion_scale...", factory=dict, cli=False)
    save_images: bool = option(True, "Keep the LR and SR images of every method.", cli=False)
    reference_transfer: bool = option(True, "With --db: also score every method followed by same-scene reference "
                                            "transfer (rows '<method> (transfer)'; see rasr/restoration/transfer.py).")
    baseline: str | None = option("bicubic", "Method the deltas of Table 1 refer to.")
    examples: int = option(3, "Best and worst images shown per method in the report.", low=0)
    shard_size: int = option(32, "Test images per shard (unit of resume).", low=1)

    def refine(self, d: dict) -> dict:
        if self.reference_transfer and self.db:
            from rasr.restoration.transfer import TRANSFER

            d["reference_transfer"] = TRANSFER
        else:  # adds no rows: hashes as before the option existed
            d.pop("reference_transfer")
        if self.color_fix == "auto":  # what runs per method; all "none" hashes as "none" did before "auto"
            fixes = {m: colorfix.resolve("auto", m) for m in self.methods}
            d["color_fix"] = "none" if set(fixes.values()) == {"none"} else fixes
        return d


def image_seed(seed: int, relpath: str) -> int:
    """A per-image degradation seed: stable across runs, shards and machines (31 bits)."""
    return stable_seed(seed, relpath) & 0x7FFFFFFF


def prepare_hr(rgb: np.ndarray, crop: int, scale: int = SCALE) -> np.ndarray:
    """Centre-crop to `crop` (if set) and then to a multiple of `scale` on both sides."""
    h, w = rgb.shape[:2]
    if crop:
        if min(h, w) < crop:
            raise images.ImageError(f"{w}x{h} is smaller than the evaluation crop {crop}: lower --crop")
        top, left = (h - crop) // 2, (w - crop) // 2
        rgb = rgb[top:top + crop, left:left + crop]
        h = w = crop
    h4, w4 = h - h % scale, w - w % scale
    if h4 < scale * 4 or w4 < scale * 4:
        raise images.ImageError(f"{w}x{h} is too small to evaluate at x{scale}")
    top, left = (h - h4) // 2, (w - w4) // 2
    return np.ascontiguousarray(rgb[top:top + h4, left:left + w4])


def degrade_one(hr: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """The seeded Real-ESRGAN degradation of one HR image -> (LR uint8, recorded parameters)."""
    from rasr.research.degrade import degrade

    lr, params = degrade(images.to_tensor(hr), [seed])
    return images.to_uint8(lr[0]), params[0]


def _png(rgb: np.ndarray) -> bytes:
    return images.encode_image(rgb, "png")


class EvalWorker:
    """Loads every method once; `process` evaluates a list of HR inputs."""

    def __init__(self, cfg: EvalConfig):
        from rasr.restoration.generators import Restorer, load_generator

        for mode in cfg.ref_modes:
            if mode not in REF_MODES:
                raise ValueError(f"unknown reference mode {mode!r}: choose from {', '.join(REF_MODES)}")
        self.cfg = cfg
        self.restorers = {}
        for m in dict.fromkeys(cfg.methods + ([cfg.table5_method] if cfg.table5_method else [])):
            g = load_generator(m, weights=cfg.weights.get(m), device=cfg.device, dtype=cfg.dtype,
                               **(cfg.generator_options if m in ("osediff", "refdsr") else {}))
            self.restorers[m] = Restorer(g, tile=cfg.tile, overlap=cfg.overlap, color_fix=cfg.color_fix,
                                         batch_size=1)
        self.suite = MetricSuite([n for n in cfg.metrics], device=cfg.device, crop_border=cfg.crop_border)
        small = [n for n in cfg.metrics if n != "niqe"]
        self.suite_small = MetricSuite(small, device=cfg.device, crop_border=cfg.crop_border)
        self.galleries, self.encoders = self._open_galleries()
        self._ids = None
        self._refs = images.DecodedCache(max_items=32)
        self._features = None
        if self.galleries and cfg.reference_transfer:
            from rasr.restoration.transfer import FeatureCache

            self._features = FeatureCache(cfg.db)

    def _open_galleries(self):
        """Primary gallery (first table) plus one per extra encoder: {encoder: Gallery}, {encoder: Encoder}."""
        galleries, encoders = {}, {}
        if not self.cfg.db:
            return galleries, encoders
        from rasr.retrieval.search import Retriever

        primary = Retriever(self.cfg.db, self.cfg.table, self.cfg.encoder_weights, device=self.cfg.device)
        retrievers = {primary.gallery.encoder: primary}
        base = primary.gallery.name.rsplit("__", 1)[0]
        for enc in self.cfg.encoders:
            if enc not in retrievers:
                retrievers[enc] = Retriever(self.cfg.db, base, device=self.cfg.device, encoder=enc)
        return {e: r.gallery for e, r in retrievers.items()}, {e: r.encoder for e, r in retrievers.items()}

    @property
    def primary(self):
        return next(iter(self.galleries.values())) if self.galleries else None

    def _random_ref(self, seed: int, exclude: str) -> dict | None:
        ids, uris, cats, _ = self.primary._load_matrix()
        choices = [i for i in range(len(ids)) if ids[i] != exclude]
        if not choices:
            return None
        j = choices[np.random.default_rng(seed).integers(len(choices))]
        return {"ref_id": ids[j], "ref_uri": uris[j], "ref_category": cats[j], "ref_similarity": None}

    def _references(self, relpath: str, lr: np.ndarray, hr_sha: str, seed: int, category: str):
        """{mode: ref dict or None}, retrieval rows (top-1 per encoder, plus the random baseline), and the primary
        gallery's top TRANSFER_TOP_K hits (what a same-scene transfer verifies)."""
        refs: dict[str, dict | None] = {"none": None}
        retrieval = []
        candidates = []
        for enc_name, g in self.galleries.items():
            vec = self.encoders[enc_name].encode([lr])
            hits = g.search(vec, k=TRANSFER_TOP_K if g is self.primary else 1, exclude_ids=[hr_sha])[0]
            if g is self.primary:
                candidates = hits
            hit = hits[0] if hits else None
            retrieval.append({"relpath": relpath, "category": category, "encoder": enc_name,
                              "top1_uri": hit.uri if hit else None, "top1_category": hit.category if hit else None,
                              "similarity": hit.similarity if hit else None,
                              "match": bool(hit and hit.category == category)})
            ref = None if hit is None else {"ref_id": hit.id, "ref_uri": hit.uri, "ref_category": hit.category,
                                            "ref_similarity": hit.similarity}
            refs["retrieved" if g is self.primary else f"retrieved:{enc_name}"] = ref
        if self.galleries:
            rnd = self._random_ref(seed, hr_sha)
            refs["random"] = rnd
            if rnd:
                retrieval.append({"relpath": relpath, "category": category, "encoder": "random",
                                  "top1_uri": rnd["ref_uri"], "top1_category": rnd["ref_category"],
                                  "similarity": None, "match": rnd["ref_category"] == category})
        if relpath in self.cfg.pairs:
            uri = self.cfg.pairs[relpath]
            refs["given"] = {"ref_id": None, "ref_uri": uri, "ref_category": None, "ref_similarity": None}
        return refs, retrieval, candidates

    def _runs(self) -> list[tuple[str, str]]:
        """(method, reference mode) pairs to evaluate."""
        runs = []
        for m in self.cfg.methods:
            if self.restorers[m].g.uses_reference:
                runs += [(m, mode) for mode in self.cfg.ref_modes]
            else:
                runs.append((m, "none"))
        if self.cfg.table5_method:
            runs += [(self.cfg.table5_method, f"retrieved:{e}") for e in self.galleries if e != self.primary.encoder]
            runs += [(self.cfg.table5_method, mode) for mode in ("retrieved", "random")
                     if (self.cfg.table5_method, mode) not in runs]
        if self._features is not None:  # each method's output (its first run above) then the transfer
            runs += [(m, TRANSFER_MODE) for m in self.cfg.methods]
        return runs

    def process(self, items: list[Item], out: str, shard_id: str, run_id: str) -> dict[str, list[dict]]:
        """Evaluate `items` (HR files); returns {"manifest": per-image rows, "retrieval": rows}."""
        rows, retrieval = [], []
        for item in items:
            r, ret = self._one(item, out, shard_id, run_id)
            rows += r
            retrieval += ret
        for r in retrieval:
            r["run_id"] = run_id
        return {"manifest": rows, RETRIEVAL_DIR: retrieval}

    def _base_row(self, item: Item, shard_id: str, run_id: str) -> dict:
        row = {f.name: None for f in EVAL_SCHEMA}
        row.update(relpath=item.relpath, source_uri=item.uri, category=catalog.category_of(item.relpath),
                   shard_id=shard_id, run_id=run_id)
        return row

    def _one(self, item: Item, out: str, shard_id: str, run_id: str) -> tuple[list[dict], list[dict]]:
        base = self._base_row(item, shard_id, run_id)
        seed = image_seed(self.cfg.seed, item.relpath)
        base["seed"] = seed
        try:
            data = storage.read_bytes(item.uri)
            hr = prepare_hr(images.decode_image(data, max_pixels=self.cfg.max_pixels).rgb, self.cfg.crop)
            if item.relpath in self.cfg.lr_files:
                lr = images.decode_image(storage.read_bytes(self.cfg.lr_files[item.relpath])).rgb
                if (lr.shape[0] * SCALE, lr.shape[1] * SCALE) != hr.shape[:2]:
                    raise images.ImageError(f"LR file is {lr.shape[1]}x{lr.shape[0]}, HR (cropped) is "
                                            f"{hr.shape[1]}x{hr.shape[0]}: expected exactly x{SCALE}")
                base["degradation"] = json.dumps({"lr_file": self.cfg.lr_files[item.relpath]})
            else:
                lr, params = degrade_one(hr, seed)
                base["degradation"] = json.dumps(params, sort_keys=True)
        except Exception as e:  # noqa: BLE001 - a bad test image is a row with the reason
            base.update(method="-", ref_mode="-", status="error", error=storage.redact(str(e)),
                        processed_at=dt.datetime.now(dt.timezone.utc))
            return [base], []
        base.update(width=hr.shape[1], height=hr.shape[0])
        rel = storage.safe_relpath(item.relpath)
        if self.cfg.save_images:
            base["gt_uri"] = storage.join(out, "images", "gt", rel + ".png")
            base["lr_uri"] = storage.join(out, "images", "lr", rel + ".png")
            storage.write_bytes(base["gt_uri"], _png(hr))
            storage.write_bytes(base["lr_uri"], _png(lr))
        refs, retrieval, candidates = self._references(item.relpath, lr, content_id(data), seed,
                                                       base["category"])
        verified = []  # the same-scene match of this image (verified once, for every method's transfer row)
        rows = []
        made: dict[str, tuple[np.ndarray, float]] = {}  # method -> (its first output, restore ms): what transfer takes
        suite = self.suite if min(hr.shape[:2]) >= NIQE_MIN_SIZE else self.suite_small
        for method, mode in self._runs():
            row = {**base, "method": method, "ref_mode": mode}
            restorer = self.restorers[method]
            row["weights_id"] = restorer.g.weights_id
            if mode == TRANSFER_MODE:
                self._transfer_row(row, made.get(method), lr, hr, candidates, verified, suite, out, rel)
            elif mode not in refs:
                row.update(status="error", error=f"no reference for mode {mode!r}"
                           + (" (not in the pairs CSV)" if mode == "given" else " (no gallery: pass --db)"))
            else:
                ref = refs[mode]
                if ref:
                    row.update(ref)
                try:
                    t0 = time.perf_counter()
                    ref_img = self._refs.get(ref["ref_uri"]) if ref and restorer.g.uses_reference else None
                    prompt = ""
                    if hasattr(restorer.g, "prompt_for"):  # text-conditioned: the test image's category and its ref's
                        prompt = restorer.g.prompt_for(lr, base["category"], ref_img, ref.get("ref_category") if ref else None)
                    sr = restorer.restore([lr], [ref_img], [prompt])[0]
                    t1 = time.perf_counter()
                    made.setdefault(method, (sr, (t1 - t0) * 1e3))
                    row.update(suite.score(sr, hr))
                    row.update(restore_ms=(t1 - t0) * 1e3, metrics_ms=(time.perf_counter() - t1) * 1e3,
                               status="ok")
                    if self.cfg.save_images:
                        row["sr_uri"] = storage.join(out, "images", method, mode.replace(":", "-"), rel + ".png")
                        storage.write_bytes(row["sr_uri"], _png(sr))
                except Exception as e:  # noqa: BLE001 - one method failing on one image is a row with the reason
                    row.update(status="error", error=f"{e.__class__.__name__}: {storage.redact(str(e))}")
            row["processed_at"] = dt.datetime.now(dt.timezone.utc)
            rows.append(row)
        return rows, retrieval

    def _transfer_row(self, row: dict, made: tuple[np.ndarray, float] | None, lr: np.ndarray, hr: np.ndarray,
                      candidates: list, verified: list, suite, out: str, rel: str) -> None:
        """Score `made` (a method's output) after same-scene transfer from the verified candidate; the output as it
        was when none verifies (ref_match says which). `verified` holds the image's match once the first method
        has verified it (the LR and the candidates are the same for every method)."""
        from rasr.restoration import transfer

        if made is None:
            row.update(status="error", error=f"no output of {row['method']} to transfer detail onto")
            return
        sr, ms = made
        try:
            t0 = time.perf_counter()
            if not verified:
                cands = [(h.id, h.uri, self._features.get(h.id, h.uri)) for h in candidates]
                verified.append(transfer.verify(transfer.query_features(lr, SCALE), cands)[0])
            match = verified[0]
            row["ref_match"] = "same_scene" if match else ("semantic" if candidates else "none")
            if match is not None:
                hit = candidates[match.index]
                row.update(ref_id=hit.id, ref_uri=hit.uri, ref_category=hit.category, ref_similarity=hit.similarity)
                done = transfer.transfer(sr, lr, self._refs.get(hit.uri), match.homography)
                sr = done.pixels
                row["ref_coverage"] = done.coverage
            t1 = time.perf_counter()
            row.update(suite.score(sr, hr))
            row.update(restore_ms=ms + (t1 - t0) * 1e3, metrics_ms=(time.perf_counter() - t1) * 1e3, status="ok")
            if self.cfg.save_images:
                row["sr_uri"] = storage.join(out, "images", row["method"], TRANSFER_MODE, rel + ".png")
                storage.write_bytes(row["sr_uri"], _png(sr))
        except Exception as e:  # noqa: BLE001 - one failure is a row with the reason
            row.update(status="error", error=f"{e.__class__.__name__}: {storage.redact(str(e))}")
