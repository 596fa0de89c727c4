"""`rasr evaluate`, `rasr metrics`, `rasr dataset build`, `rasr train`: the commands of people who
measure and train models (flows/cli.py adds them to `rasr`)."""

from __future__ import annotations

import json
import sys

import click

from flows._cli import EXIT_PARTIAL, build, config_options, fail, must_exist, print_summary
from rasr.dataset import DatasetConfig
from tasks.cluster import Cluster


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@click.command()
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
@config_options(Cluster)
def evaluate(hr, output, methods, ref_modes, db, table, lr_dir, pairs, encoders, table5_method, baseline, seed, crop,
             metric_names, crop_border, weight_specs, shard_size, examples, **opts) -> None:
    """Evaluate methods on the HR test set HR (categories = sub-folders) into OUTPUT.

    LR inputs come from the seeded Real-ESRGAN degradation (or --lr-dir). Writes per-image Parquet,
    summary.parquet, table1.md (paper's Table 1 layout, deltas vs --baseline), table5.md (retrieval
    encoders) and report.html. Resumable: a rerun skips finished shards."""
    must_exist(hr, "HR test set")
    for opt, value in (("--lr-dir", lr_dir), ("--pairs", pairs), ("--db", db)):
        if value:
            must_exist(value, opt)
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
                            crop_border=crop_border, weights=weights, shard_size=shard_size,
                            cluster=build(Cluster, opts), report_examples=examples, show_progress=True)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1
        fail(e)
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
@click.option("--metrics", "metric_names", default="psnr,ssim,lpips,dists,niqe,musiq,clipiqa", show_default=True)
@click.option("--crop-border", type=int, default=0, show_default=True, help="Pixels shaved per side for PSNR/SSIM.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of means by metric (null = unavailable).")
def metrics_cmd(pred_dir, gt_dir, out, metric_names, crop_border, as_json) -> None:
    """Score images of any tool in PRED_DIR against GT_DIR, matched by file name (extension ignored)."""
    from flows.evaluate import score_folder

    try:
        res = score_folder(pred_dir, gt_dir, out=out, metric_names=_csv(metric_names), crop_border=crop_border,
                           show_progress=not as_json)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1
        fail(e)
    if as_json:
        click.echo(json.dumps(res["means"]))
    else:
        click.echo(res["table"])
        for name, st in res["status"].items():
            if st != "ok":
                click.echo(f"  {name}: {st}", err=True)
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

    try:
        s = build_dataset(src, out, cfg, cluster, show_progress=True)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1
        fail(e)
    for err in s.get("errors", []):
        click.echo(f"  skipped {err['uri']}: {err['error']}", err=True)
    print_summary("dataset summary" + ("" if s["rebuilt"] else " (up to date, nothing done)"), s,
                   ["categories", "train", "self_pairs", "test", "reference", "skipped", "out"])


@click.command()
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
    must_exist(dataset_dir, "dataset")
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
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1
        fail(e)
    if s.get("losses"):
        for name, st in s["losses"]["status"].items():
            click.echo(f"  loss {name}: {st}")
    print_summary("training summary", s, ["step", "resumed_from", "final_loss", "seconds", "branch"])
