"""`rasr`: a thin command line over the flows (each command is also a Prefect flow / deployment).

Exit codes: 0 done; 1 the run could not complete (message on stderr); 2 usage error;
3 the run completed but some inputs failed (see the summary and the manifest).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import click

from flows._cli import EXIT_PARTIAL, build, checked, config_options, must_exist, print_summary, run
from rasr.restoration.enhance_run import EnhanceConfig
from rasr.restoration.generators import GeneratorOptions
from rasr.retrieval.index_run import IndexConfig
from rasr.retrieval.search import SearchConfig
from tasks.cluster import Cluster


def _quiet(verbose: bool) -> None:
    """Set before Prefect/Ray start: their INFO logs would bury the progress bars."""
    if not verbose:  # errors are printed once, by us, without Prefect's tracebacks
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    from tasks.runtime import quiet_environment

    quiet_environment()


class Commands(click.Group):
    """The archive commands are defined in this module; those of people who measure and train models
    (flows/cli_research.py: they import torch) are loaded when used or listed, so a usage error of
    `rasr enhance` still comes back in about a second."""

    RESEARCH = {"evaluate": "evaluate", "metrics": "metrics_cmd", "dataset": "dataset", "train": "train"}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.RESEARCH})

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # instead of click's bare "Aborted!": what was kept, and how to go on
            click.echo("\ninterrupted: finished shards are kept (their outputs, manifest rows and done-markers); "
                       "run the same command again to resume where it stopped", err=True)
            sys.exit(130)

    def get_command(self, ctx, name):
        if name in self.RESEARCH:
            from flows import cli_research

            return getattr(cli_research, self.RESEARCH[name])
        return super().get_command(ctx, name)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@config_options(IndexConfig, Cluster)
def index(gallery, **opts) -> None:
    """Embed a reference GALLERY (folder or s3:// prefix; category = sub-folder) into a LanceDB table.

    Incremental: only new or changed files are embedded; rows of deleted files are removed."""
    from rasr.retrieval import index_run

    cfg, cluster = build(IndexConfig, opts), build(Cluster, opts)
    checked(index_run.check, gallery, cfg)
    from flows.index import index_gallery

    summary = run(index_gallery, gallery, cfg, cluster, show_progress=True)
    db = cfg.db
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
    if not summary.get("rows"):
        from rasr.retrieval.gallery import empty_warning

        click.echo(f"warning: {empty_warning(db, summary.get('table'), summary.get('failed', 0))}", err=True)
    print_summary("index summary", summary, ["table", "files", "embedded", "deleted", "unchanged", "failed",
                                              "excluded_small", "duplicates", "near_duplicates", "low_quality",
                                              "rows", "versions", "ann_index", "seconds", "db"])
    sys.exit(EXIT_PARTIAL if summary["failed"] else 0)


@main.command()
@click.argument("images", nargs=-1, required=True)
@config_options(SearchConfig)
@click.option("--json", "as_json", is_flag=True, help="JSON: a list of {uri, category, similarity} for one image, "
                                                      "one line per query for several.")
@click.option("--out", default=None, help="Write one row per query to this .jsonl or .parquet file (local or s3://).")
@config_options(Cluster)
def search(images, as_json, out, **opts) -> None:
    """Show the top-k gallery references for IMAGES (an identical image is never its own reference).

    One image file: answered at once in this process. Several images, folders or s3:// prefixes (or
    --out): searched on Ray actors that load the encoder and the gallery once, one row per query:
    query_uri, relpath, status, error, ids, uris, categories, similarities."""
    cfg = build(SearchConfig, opts)
    db = cfg.db
    for uri in images:
        must_exist(uri, "query")
    must_exist(db, "--db")
    if out and not out.endswith((".jsonl", ".json", ".parquet")):
        raise click.UsageError(f"--out {out}: give a .jsonl or .parquet file name")
    from rasr import storage

    fs, path = storage.filesystem(images[0])
    single = len(images) == 1 and not out and fs.isfile(path)
    if not single:
        from flows.search import search_batch

        s = run(search_batch, list(images), out, cfg, build(Cluster, opts), show_progress=True)
        if as_json and not out:
            for row in s["rows"]:
                click.echo(json.dumps(row))
        elif not out:
            for row in s["rows"]:
                best = (f"{row['similarities'][0]:.4f}  {row['categories'][0] or '-':<14}  {row['uris'][0]}"
                        if row["uris"] else row["error"] or "no reference")
                click.echo(f"{row['query_uri']}  ->  {best}")
        _warn_if_empty(db, cfg.table)
        print_summary("search summary", s, ["queries", "ok", "failed", "skipped", "k", "out", "seconds"])
        sys.exit(EXIT_PARTIAL if s["failed"] else 0)
    from rasr.restoration import images as I
    from rasr.retrieval.search import Retriever

    def search_one():
        data = storage.read_bytes(images[0])
        r = Retriever(db, cfg.table, cfg.encoder_weights)
        vecs = r.embed([I.decode_image(data, max_pixels=I.DEFAULT_MAX_PIXELS).rgb])
        return r.gallery, r.search(vecs, k=cfg.k, exclude_ids=[r.content_id(data)], category=cfg.category)[0]

    g, hits = run(search_one)
    if not g.count():
        _warn_if_empty(db, g.name)
    if as_json:
        click.echo(json.dumps([h.as_dict() for h in hits], indent=1))
        return
    click.echo(f"top {len(hits)} of {g.count()} in {g.name} ({g.encoder}):")
    for rank, h in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {h.similarity:.4f}  {h.category or '-':<14}  {h.uri}")


@main.command()
@click.argument("input")
@click.argument("output")
@config_options(EnhanceConfig, GeneratorOptions, Cluster)
def enhance(input, output, **opts) -> None:
    """Enhance every photo under INPUT into OUTPUT (folders or s3:// prefixes).

    Writes OUTPUT/images/<input path>.<format>, a Parquet manifest row per input and a done-marker per
    shard. Re-running skips finished shards; a crashed run resumes where it stopped."""
    # Checked and planned before Prefect or Ray start: a mistake is reported at once, and a rerun with
    # nothing new finishes without starting any engine or loading any model.
    from rasr.restoration import enhance_run as E

    cfg = build(EnhanceConfig, opts, generator_options=build(GeneratorOptions, opts).as_dict())
    cluster = build(Cluster, opts)
    def check_and_plan():
        target = E.output_for(cfg, input, output)  # OUTPUT, or OUTPUT/<input>-<hash> with --nest-by-input
        E.check_inputs(cfg, input, target)
        return target, E.plan(cfg, input, target)

    target, work = checked(check_and_plan)
    if cfg.db:
        _warn_if_empty(cfg.db, cfg.table)
    if not work.shards:
        click.echo(f"nothing new: all {len(work.items)} inputs are done under this configuration")
        print_summary("enhance summary", {"inputs": len(work.items), "already_done": len(work.items),
                                          "processed": 0}, ["inputs", "already_done", "processed"])
        sys.exit(0)
    from flows.enhance import enhance_archive
    from rasr import storage

    # the flow takes this plan instead of listing INPUT (or reading --input-list) and the run state again
    plan_uri = storage.join(target, "_state", f"plan-{os.getpid()}-{time.time_ns()}.parquet")
    try:
        run(E.write_plan, plan_uri, work, cfg)
        summary = run(enhance_archive, input, output, cfg, cluster, show_progress=True, plan_uri=plan_uri)
    finally:
        with contextlib.suppress(Exception):  # whatever became of the run; a store that is down keeps it
            storage.remove(plan_uri)
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
    print_summary("enhance summary", summary, keys)
    sys.exit(EXIT_PARTIAL if summary["failed"] else 0)


def _warn_if_empty(db: str, table: str | None) -> None:
    """A line on stderr when the gallery holds no photo (a warning: the run itself goes on)."""
    from rasr.retrieval.gallery import empty_warning

    try:
        warning = empty_warning(db, table)
    except Exception:  # noqa: BLE001 - the run reports a gallery it cannot open by itself
        return
    if warning:
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.argument("output")
@click.option("--first-run", default=None, help="Run whose images come first (default: the latest run).")
def report(output, first_run) -> None:
    """Write OUTPUT/report/index.html: a results page of an enhance OUTPUT (folder or s3:// prefix).

    Summary, failures by reason, and per image original | enhanced with a before/after slider, a detail
    crop, the references with similarity and category, and timings; filters and sorts. It opens from
    the folder with no server; thumbnails are made once (report/thumbs/) and reused by later runs."""
    from rasr import catalog, storage

    must_exist(output, "output")
    if not storage.exists(storage.join(output, catalog.MANIFEST_DIR)):
        raise click.UsageError(f"{storage.redact(output)} has no manifest: give the OUTPUT folder of `rasr enhance`")
    from rasr.results.results_page import write_report

    res = run(write_report, output, first_run=first_run)
    res["report"] = storage.redact(res["report"])
    print_summary("report summary", res, ["rows", "pages", "thumbs_made", "thumbs_reused", "refs_made",
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
    must_exist(output, "output")
    if input_:
        must_exist(input_, "input")
    from rasr import gc as G
    from rasr.storage import redact

    stale = run(G.find_stale, output, input_)
    for uri in stale.sources[:50]:
        click.echo(f"  vanished {redact(uri)}")
    if len(stale.sources) > 50:
        click.echo(f"  ... and {len(stale.sources) - 50} more")
    summary = G.apply_or_count(output, stale, apply_)
    if not apply_ and (stale.sources or stale.temp_files):
        click.echo("  (nothing removed: pass --apply to remove them)")
    print_summary("gc summary", summary, list(summary))


if __name__ == "__main__":
    main()
