"""`rasr evaluate`, `rasr metrics`, `rasr dataset build`, `rasr train`: the commands of people who
measure and train models (flows/cli.py adds them to `rasr`)."""

from __future__ import annotations

import json
import sys

import click

from flows._cli import EXIT_PARTIAL, build, config_options, must_exist, print_summary, run
from rasr.research.dataset import DatasetConfig
from rasr.research.evaluation import EvalConfig
from rasr.restoration.generators import GeneratorOptions
from rasr.research.losses import PAPER_WEIGHTS, TERMS
from rasr.research.metrics import ScoreConfig
from rasr.research.train import TrainConfig
from tasks.cluster import Cluster, TrainScaling


@click.command()
@click.argument("hr")
@click.argument("output")
@config_options(EvalConfig, GeneratorOptions, Cluster)
def evaluate(hr, output, **opts) -> None:
    """Evaluate methods on the HR test set HR (categories = sub-folders) into OUTPUT.

    LR inputs come from the seeded Real-ESRGAN degradation (or --lr-dir). Writes per-image Parquet,
    summary.parquet, table1.md (paper's Table 1 layout, deltas vs --baseline), table5.md (retrieval
    encoders) and report.html. Resumable: a rerun skips finished shards."""
    cfg = build(EvalConfig, opts, generator_options=build(GeneratorOptions, opts).as_dict())
    must_exist(hr, "HR test set")
    for opt, value in (("--lr-dir", cfg.lr_dir), ("--pairs", cfg.pairs_file), ("--db", cfg.db)):
        if value:
            must_exist(value, opt)
    from flows.evaluate import evaluate as evaluate_flow

    res = run(evaluate_flow, hr, output, cfg, build(Cluster, opts), show_progress=True)
    click.echo("\nTable 1\n" + res["table1"])
    if res["table5"]:
        click.echo("\nTable 5\n" + res["table5"])
    print_summary("evaluation summary", res, ["run_id", "images", "already_done", "evaluated", "failed_rows",
                                               "seconds", "report"])
    sys.exit(EXIT_PARTIAL if res["failed_rows"] else 0)


@click.command("metrics")
@click.argument("pred_dir")
@click.argument("gt_dir")
@click.option("--out", default=None, help="Write metrics.parquet, summary.parquet and metrics.md here.")
@config_options(ScoreConfig)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of means by metric (null = unavailable).")
def metrics_cmd(pred_dir, gt_dir, out, as_json, **opts) -> None:
    """Score images of any tool in PRED_DIR against GT_DIR, matched by file name (extension ignored)."""
    cfg = build(ScoreConfig, opts)
    from flows.evaluate import score_folder

    res = run(score_folder, pred_dir, gt_dir, out, cfg, show_progress=not as_json)
    if as_json:
        click.echo(json.dumps(res["means"]))
    else:
        click.echo(res["table"])
        for name, st in res["status"].items():
            if st != "ok":
                click.echo(f"  {name}: {st}", err=True)
        for note in res.get("notes", [])[:20]:
            click.echo(f"  not scored: {note}", err=True)
        click.echo(f"\n{res['pairs']} pairs scored, {res['failed']} failed, {len(res['unmatched'])} predictions without GT")
    sys.exit(EXIT_PARTIAL if res["failed"] else 0)


@click.group()
def dataset() -> None:
    """Training data for RefDSR (RASR-Flickr30 layout)."""


@dataset.command("build")
@click.argument("src")
@click.argument("out")
@config_options(DatasetConfig, Cluster)
def dataset_build(src, out, **opts) -> None:
    """Split SRC (category sub-folders) into train/test/reference, crop, and rank references, into OUT."""
    must_exist(src, "source folder")
    cfg, cluster = build(DatasetConfig, opts), build(Cluster, opts)
    from flows.dataset import build_dataset

    s = run(build_dataset, src, out, cfg, cluster, show_progress=True)
    for err in s.get("errors", []):
        click.echo(f"  skipped {err['uri']}: {err['error']}", err=True)
    print_summary("dataset summary" + ("" if s["rebuilt"] else " (up to date, nothing done)"), s,
                   ["categories", "train", "self_pairs", "test", "reference", "skipped", "out"])


@click.command()
@click.argument("dataset_dir")
@click.argument("out")
@config_options(TrainConfig)
@click.option("--loss", "loss_specs", multiple=True, metavar="NAME=WEIGHT",
              help=f"Loss weights, e.g. --loss lpips=2 --loss gan=0 (the paper's: "
                   f"{' '.join(f'{t}={getattr(PAPER_WEIGHTS, t):g}' for t in TERMS)}).")
@config_options(TrainScaling)
def train(dataset_dir, out, loss_specs, **opts) -> None:
    """Train RefDSR's reference branch on DATASET_DIR; checkpoints under OUT (rerun to resume).

    The final branch loads with `rasr enhance --generator refdsr --refdsr-weights OUT/checkpoints/step-N/branch`."""
    must_exist(dataset_dir, "dataset")
    weights = {}
    for spec in loss_specs:
        name, _, value = spec.partition("=")
        if name not in TERMS or not value:
            raise click.BadParameter(f"{spec!r}: expected {'|'.join(TERMS)}=WEIGHT", param_hint="--loss")
        weights[name] = float(value)
    cfg = build(TrainConfig, opts, dataset=dataset_dir, out=out, **weights)
    from flows.train import train_refdsr

    s = run(train_refdsr, cfg, build(TrainScaling, opts))
    if s.get("losses"):
        for name, st in s["losses"]["status"].items():
            click.echo(f"  loss {name}: {st}")
    print_summary("training summary", s, ["step", "resumed_from", "final_loss", "seconds", "branch"])
