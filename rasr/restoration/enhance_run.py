"""An enhance run before it starts: its config (what it produces and how), the checks of its
arguments (a mistake is a usage error in about a second, before any engine starts), and its plan
(the inputs not yet done, in shards). rasr/restoration/worker.py holds the worker that does the work."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

from rasr import catalog, listing, options, storage
from rasr.restoration import images
from rasr.catalog import Item
from rasr.restoration import colorfix
from rasr.restoration.colorfix import COLOR_FIXES
from rasr.restoration.generators import GENERATORS  # names only: no torch import
from rasr.options import STRICT, GalleryOptions, Identity, RestorationOptions, UsageError, option


@dataclass
class EnhanceConfig(Identity, RestorationOptions, GalleryOptions):
    """Everything an enhance run takes besides its input, output and cluster: the gallery it retrieves from
    (GalleryOptions; without a db, no retrieval), how the generator runs (RestorationOptions) and what it
    writes. The fields not in NOT_HASHED decide what it produces (its config hash, options.Identity)."""

    __pydantic_config__ = STRICT
    CLI_HIDDEN = ("encoder_weights",)  # the table's own source; set in code or a deployment's parameters
    # the same outputs whatever these are (the gallery's spelling is normalised, not left out)
    NOT_HASHED = ("device", "batch_size", "png_level", "quality", "shard_size", "follow_symlinks", "nest_by_input",
                  "retry_failed", "c2pa_cert", "c2pa_key", "input_list")
    HASHED_WHEN_SET = {"output_profile": "keep", "strip_metadata": False, "strip_gps": False}

    generator: str = option("realesrgan", "Generator; or package.module:ClassName of your own Generator subclass.",
                            choices=GENERATORS, open=True)
    generator_weights: str | None = option(
        None, "Generator weights (realesrgan: .param/.pth/.safetensors; osediff/refdsr: SD-2.1-base folder, "
              "s3:// or hub id).", flags=("--generator-weights", "--weights"))
    generator_options: dict = option(help="osediff_weights, refdsr_weights, fusion_scale... (GeneratorOptions)",
                                     factory=dict, cli=False)
    top_k: int = option(1, "References retrieved per image (the best one is used).", low=1)
    min_similarity: float = option(0.0, "Below this cosine similarity the image is restored without a reference.",
                                   low=-1.0, high=1.0)
    reference_transfer: str = option(
        "auto", "auto: where a retrieved reference shows the same scene (verified geometrically), align it and take "
                "its fine detail; off: never (outputs as without it).", choices=("auto", "off"))
    category_filter: bool = option(False, "Only retrieve references from the input's own folder category.")
    output_format: str = option("png", "Output format (png and webp-lossless keep every pixel; see docs/PERFORMANCE.md).",
                                flags=("--format",), choices=("png", "jpg", "webp", "webp-lossless", "tiff"))
    png_level: int = option(images.DEFAULT_PNG_LEVEL, "PNG zlib level: 1 writes several times faster than 6 for files "
                                                      "a few per cent larger; same pixels.", low=0, high=9)
    quality: int = option(images.DEFAULT_QUALITY, "jpg / lossy webp quality.", low=1, high=100)
    tagger: str = option("category", "Prompt tagger for diffusion generators: category|none|ram:PATH.")
    shard_size: int = option(64, "Images per shard (unit of resume).", low=1)
    follow_symlinks: bool = option(False, "Follow symlinks that point outside INPUT (by default they are recorded "
                                          "as skipped).")
    nest_by_input: bool = option(False, "Write into OUTPUT/<input name>-<hash>/ so that several INPUTs can share one "
                                        "OUTPUT (without it, an OUTPUT belongs to the INPUT of its first run).")
    output_profile: str = option("keep", "Colour of the output: keep the input's ICC profile (the model runs on the "
                                         "encoded values), or convert to sRGB for web copies.", choices=("keep", "srgb"))
    strip_metadata: bool = option(False, "Write none of the input's EXIF, XMP and IPTC (the provenance marking stays).")
    strip_gps: bool = option(False, "Carry the metadata but not the location (EXIF GPS, XMP exif:GPS*).")
    c2pa_cert: str | None = option(None, "PEM certificate chain to sign a C2PA manifest into each output.",
                                   envvar="RASR_C2PA_CERT")
    c2pa_key: str | None = option(None, "PEM private key of --c2pa-cert.", envvar="RASR_C2PA_KEY")
    input_list: str | None = option(None, "Enhance the keys this file lists instead of listing INPUT (one key per "
                                           "line, relative to INPUT or a URI under it; or an S3 Inventory "
                                           "manifest.json): a night told what is new skips the listing.")
    retry_failed: bool = option(False, "Also redo inputs that failed for good (not an image, too large...); inputs "
                                       "that failed for a reason that can pass are always retried.")

    def refine(self, d: dict) -> dict:
        # png_level never changes pixels; quality only matters for lossy formats (95 was implicit before
        # it was an option, so leaving it out at 95 keeps earlier runs' hashes and their resume)
        if images.is_lossy(self.output_format) and self.quality != images.DEFAULT_QUALITY:
            d["quality"] = self.quality
        # a transfer changes pixels only with a gallery; "off" hashes as runs before it existed (they resume)
        if self.reference_transfer == "off" or not self.db:
            d.pop("reference_transfer")
        else:
            from rasr.restoration.transfer import TRANSFER

            d["reference_transfer"] = TRANSFER
        # what runs, not how it was asked for: "auto" and its resolution hash alike (earlier runs' "none" resumes)
        d["color_fix"] = colorfix.resolve(self.color_fix, self.generator) if self.color_fix in COLOR_FIXES else self.color_fix
        return d

    def encoding(self) -> images.Encoding:
        return images.Encoding(self.output_format, png_level=self.png_level, quality=self.quality)


def check_inputs(cfg: EnhanceConfig, input: str, output: str) -> None:
    """Validate every argument before any engine starts: a mistake is reported in about a second,
    not after Prefect, Ray and the models have started (or, worse, after the work is done); then claim
    OUTPUT for INPUT (`claim_output`). `output` is where the run writes (`output_for`)."""
    if cfg.input_list and not storage.exists(cfg.input_list):
        raise UsageError(f"--input-list {storage.redact(cfg.input_list)} does not exist: give a file of keys (one per "
                         f"line) or an S3 Inventory manifest.json")
    if cfg.generator not in GENERATORS and ":" not in cfg.generator:  # module:Class = a custom generator
        raise UsageError(f"unknown generator {cfg.generator!r}: choose one of {', '.join(GENERATORS)}")
    if cfg.color_fix not in COLOR_FIXES:
        raise UsageError(f"unknown colour fix {cfg.color_fix!r}: choose one of {', '.join(COLOR_FIXES)}")
    try:
        cfg.encoding()
        options.check(cfg)  # the declared choices and bounds (--top-k >= 1, --png-level 0-9, ...)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.tile and cfg.overlap * 2 >= cfg.tile:
        raise UsageError(f"--tile-overlap {cfg.overlap} must be under half of --tile {cfg.tile}")
    if cfg.generator == "refdsr" and not cfg.db:
        raise UsageError("generator 'refdsr' restores with references: pass --db GALLERY_DB (index one with `rasr index`)")
    _check_locations(input, output)
    if cfg.db:
        _check_gallery(cfg.db, cfg.table)
    claim_output(input, output)  # last: a run refused for another reason claims nothing


OWNER_FILE = "_input.json"  # OUTPUT's first INPUT: a run from another INPUT is refused


def input_identity(input: str) -> str:
    """One spelling of an INPUT location (real path, normalised prefix; credentials never kept)."""
    return storage.redact(storage.normalise(input))


def output_for(cfg: EnhanceConfig, input: str, output: str) -> str:
    """Where this run writes: OUTPUT itself, or with --nest-by-input OUTPUT/<input folder name>-<8 hex of its
    identity>/ (readable, and two inputs of the same name never meet)."""
    if not cfg.nest_by_input:
        return output
    ident = input_identity(input)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", ident.rstrip("/").rsplit("/", 1)[-1]).strip("._") or "input"
    return storage.join(output, f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}")


def claim_output(input: str, output: str) -> None:
    """OUTPUT belongs to one INPUT: the first run records it in OUTPUT/_input.json (created atomically, so
    of two runs that start together from different INPUTs one wins); a run from another INPUT is refused
    before any work, so no enhanced photo of one input is ever overwritten by another's."""
    from rasr.locks import create_once

    ident = input_identity(input)
    uri = storage.join(output, OWNER_FILE)
    body = json.dumps({"input": ident, "claimed_at": time.time()}).encode()
    if create_once(uri, body):
        return
    for _ in range(50):  # a file being created elsewhere (non-atomic stores) is complete within moments
        try:
            owner = json.loads(storage.read_bytes(uri)).get("input")
            break
        except (ValueError, FileNotFoundError):
            time.sleep(0.1)
    else:
        raise UsageError(f"{storage.redact(uri)} is unreadable: it records which INPUT OUTPUT belongs to; "
                         f"remove it only if OUTPUT holds the outputs of this INPUT alone")
    if owner != ident:
        raise UsageError(
            f"output {storage.redact(output)} holds the outputs of input {owner}, not of {ident}: enhancing another "
            f"input into it would overwrite photos of the same name. Give another OUTPUT, or pass --nest-by-input "
            f"to keep each input's outputs under OUTPUT/<input name>-<hash>/")


def _check_locations(input: str, output: str) -> None:
    options.require_exists(input, "input")
    if storage.is_remote(output):
        ofs, opath = storage.filesystem(output)
        if ofs.isfile(opath):
            raise UsageError(f"output {storage.redact(output)} is a file: give a folder or prefix")
    else:
        if os.path.lexists(output) and not os.path.isdir(output):
            what = "a dangling symlink" if os.path.islink(output) and not os.path.exists(output) else "not a folder"
            raise UsageError(f"output {output} is {what}: give a folder (it is created if missing)")
        parent = os.path.dirname(os.path.abspath(output))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise UsageError(f"output {output} cannot be created: {parent} is not a writable folder")
    if storage.is_remote(input) == storage.is_remote(output):
        # resolved real paths (a symlinked OUTPUT inside INPUT is still inside it), normalised prefixes
        norm = lambda u: storage.normalise(u).rstrip("/") + "/"
        if norm(output).startswith(norm(input)):
            raise UsageError(f"output {storage.redact(output)} is inside input {storage.redact(input)}: "
                             f"outputs would be re-read as inputs")


def _check_gallery(db: str, table: str | None) -> None:
    """The DB exists and holds the table (from its listing: no LanceDB import, nothing created)."""
    fs, path = storage.filesystem(db)
    shown = storage.redact(db)
    if not fs.exists(path):
        raise UsageError(f"--db {shown} does not exist: index a gallery first (`rasr index GALLERY --db {shown}`)")
    if fs.isfile(path):
        raise UsageError(f"--db {shown} is a file, not a LanceDB folder: pass the folder `rasr index` wrote")
    from rasr.retrieval.gallery import GalleryError, choose_table  # lancedb itself is imported only on connect

    names = sorted(n[:-len(".lance")] for n in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
                   if n.endswith(".lance"))
    try:
        choose_table(names, db, table)  # the same choice the workers' Gallery.open will make
    except GalleryError as e:
        raise UsageError(str(e)) from None


@dataclass
class Plan:
    """What a run will do: the inputs listed, those in scope, and shards of the ones not yet done."""

    listed: int
    items: list[Item]
    shards: list[catalog.Shard]
    planned_at: float = 0.0  # when the run state was read (a done-marker newer than this is another run's)

    @property
    def todo(self) -> int:
        return sum(len(s.items) for s in self.shards)


def plan(cfg: EnhanceConfig, input: str, output: str, since: float | None = None,
         items: list[Item] | None = None) -> Plan:
    """List inputs (or read --input-list, or take `items`: a listing already made this run), drop those finished
    shards cover (same config, same size and mtime, or the same bytes), shard the rest; inputs that failed for a
    reason that can pass are planned again.

    since: only inputs modified at or after this epoch time (the nightly watermark)."""
    planned_at = time.time()
    if items is None:
        items = (catalog.read_input_list(input, cfg.input_list) if cfg.input_list
                 else catalog.list_inputs(input, cfg.follow_symlinks))
    listed = len(items)
    if since is not None:
        items = [i for i in items if (listing.mtime_seconds(i.mtime) or float("inf")) >= since]
    # the run state of this config; of the listed keys only, for a list (a night reads row groups, not the archive)
    markers = catalog.done_markers(output, cfg.hash(), {i.relpath for i in items} if cfg.input_list else None)
    done = catalog.covered(markers, cfg.hash(), retry_failed=cfg.retry_failed)
    done = catalog.same_bytes(items, done)  # a file replaced by identical bytes is not redone
    return Plan(listed, items, catalog.plan(items, done, cfg.hash(), cfg.shard_size), planned_at)


def write_plan(uri: str, work: Plan, cfg: EnhanceConfig) -> None:
    """The plan as one Parquet object, each input with its shard (-1: done): the CLI's plan handed to the flow,
    so a run lists the archive and reads its run state once."""
    import pyarrow as pa

    shard_of = {it.relpath: k for k, s in enumerate(work.shards) for it in s.items}
    cols = {f: [getattr(i, f) for i in work.items] for f in catalog.ITEM_FIELDS}
    table = pa.table({**cols, "size": pa.array(cols["size"], pa.int64()),
                      "shard": pa.array([shard_of.get(i.relpath, -1) for i in work.items], pa.int32())})
    meta = {"config_hash": cfg.hash(), "listed": work.listed, "planned_at": work.planned_at,
            "shard_ids": [s.id for s in work.shards]}
    storage.write_parquet(uri, table.replace_schema_metadata({"rasr.plan": json.dumps(meta)}), compression="zstd")


def read_plan(uri: str, cfg: EnhanceConfig) -> Plan | None:
    """A plan `write_plan` made, or None when it was made under another config (the flow then plans itself)."""
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    meta = json.loads(table.schema.metadata[b"rasr.plan"])
    if meta["config_hash"] != cfg.hash():
        return None
    rows = table.to_pylist()
    items = [Item(**{f: r[f] for f in catalog.ITEM_FIELDS}) for r in rows]
    members: list[list[Item]] = [[] for _ in meta["shard_ids"]]
    for it, r in zip(items, rows):
        if r["shard"] >= 0:
            members[r["shard"]].append(it)
    shards = [catalog.Shard(id=sid, items=m) for sid, m in zip(meta["shard_ids"], members)]
    return Plan(meta["listed"], items, shards, meta["planned_at"])
