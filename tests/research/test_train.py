"""Dataset builder and RefDSR training on a tiny config with real photos: resumable, overfits, loads back."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.dataset import build_dataset
from flows.train import train_refdsr
from rasr.restoration.generators import load_generator
from rasr.samples import as_rgb, load_photo
from rasr.research.train import TrainConfig, Trainer, latest_checkpoint
from tasks.cluster import TrainScaling
from tests.conftest import tree_snapshot
from rasr.research.dataset import DatasetConfig
from rasr.restoration.enhance_run import EnhanceConfig

CATEGORIES = {"animals": "chelsea", "food": "coffee", "space": "hubble_deep_field"}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Three categories of six real-photo crops each."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for cat, name in CATEGORIES.items():
        img = as_rgb(load_photo(name))
        (root / cat).mkdir()
        for i in range(6):
            y, x = rng.integers(0, img.shape[0] - 160), rng.integers(0, img.shape[1] - 160)
            Image.fromarray(img[y:y + 160, x:x + 160]).save(root / cat / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def ds(flows_env, src, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    s = build_dataset(str(src), str(out), DatasetConfig(train=3, test=1, crop=128, top_k=2, self_pairs_per_image=1))
    return out, s


def test_dataset_split_crops_and_references(ds):
    out, s = ds
    assert (s["categories"], s["train"], s["test"], s["reference"], s["self_pairs"]) == (3, 9, 3, 6, 9)
    rows = pd.read_parquet(out / "dataset.parquet")
    train = rows[(rows["split"] == "train") & (rows["kind"] == "retrieval")]
    for r in train.itertuples():
        assert Image.open(r.gt_uri).size == (128, 128)
        assert len(r.ref_uris) == 2 and all(f"/reference/{r.category}/" in u for u in r.ref_uris)
        assert list(r.ref_similarities) == sorted(r.ref_similarities, reverse=True)
    # a split never shares a source image with another
    sources = rows[rows["kind"] == "retrieval"]["source_uri"]
    refs = {os.path.basename(p) for p in (out / "reference").rglob("*.png")}
    assert not refs & {os.path.basename(u) for u in sources}
    selfp = rows[rows["kind"] == "self"]
    assert len(selfp) == 9 and all(len(u) == 1 and u[0].endswith("_b.png") for u in selfp["ref_uris"])


def test_dataset_rerun_is_a_noop(ds, src):
    out, _ = ds
    before = tree_snapshot(str(out))
    again = build_dataset(str(src), str(out), DatasetConfig(train=3, test=1, crop=128, top_k=2, self_pairs_per_image=1))
    assert again["rebuilt"] is False and tree_snapshot(str(out)) == before


def cfg(ds, tiny_diffusion, out, **kw):
    base = dict(dataset=str(ds[0]), out=str(out), sd_base=tiny_diffusion["base"],
                osediff_weights=tiny_diffusion["osediff"], steps=4, batch_size=2, crop=64, lr=1e-3,
                checkpoint_every=2, log_every=1)
    return TrainConfig(**{**base, **kw})


def test_resume_gives_the_same_losses(ds, tiny_diffusion, tmp_path):
    straight = Trainer(cfg(ds, tiny_diffusion, tmp_path / "a")).run()
    first = Trainer(cfg(ds, tiny_diffusion, tmp_path / "b"))
    first.run(until=2)  # "crash" after the step-2 checkpoint
    second = Trainer(cfg(ds, tiny_diffusion, tmp_path / "b"))
    assert second.resume() and second.step == 2
    resumed = second.run()
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]
    # bit-identical: every random choice is keyed by the step
    np.testing.assert_allclose([h["total"] for h in resumed], [h["total"] for h in straight], rtol=0, atol=0)
    assert latest_checkpoint(str(tmp_path / "b"))["step"] == 4


def test_only_the_branch_trains_and_losses_are_recorded(ds, tiny_diffusion, tmp_path):
    t = Trainer(cfg(ds, tiny_diffusion, tmp_path, steps=1))
    frozen = {n: p.detach().clone() for n, p in t.model.unet.named_parameters()}
    t.run()
    assert all(np.array_equal(p.detach(), frozen[n]) for n, p in t.model.unet.named_parameters())
    assert sum(p.numel() for p in t.params) == sum(p.numel() for p in t.model.trainable_parameters())
    state = json.loads(open(os.path.join(latest_checkpoint(str(tmp_path))["dir"], "state.json")).read())
    status = state["losses"]["status"]
    assert status["mse"] == "on"
    for name in ("lpips", "gram", "gan"):  # no weights here: off, with the reason recorded
        assert status[name].startswith("off:")


def test_overfits_a_fixed_batch_and_loads_into_enhance(ds, tiny_diffusion, tmp_path, sample_dirs, db):
    t = Trainer(cfg(ds, tiny_diffusion, tmp_path / "fit", steps=30, fixed_batch=True, checkpoint_every=30,
                    lr=1e-2))
    losses = [h["total"] for h in t.run()]
    # only the branch learns (the tiny base model is random), so the loss falls steadily, not to zero
    assert losses[-1] < 0.88 * losses[0] and losses[-1] == min(losses), losses
    branch = latest_checkpoint(str(tmp_path / "fit"))["branch"]
    opts = {"osediff_weights": tiny_diffusion["osediff"]}
    trained = load_generator("refdsr", weights=tiny_diffusion["base"], refdsr_weights=branch, **opts)
    assert trained.weights_id != load_generator("refdsr", weights=tiny_diffusion["base"],
                                                refdsr_weights=tiny_diffusion["branch"], **opts).weights_id
    from flows.enhance import enhance_archive

    s = enhance_archive(sample_dirs["archive"], str(tmp_path / "out"), EnhanceConfig(
        db=db, generator="refdsr", generator_weights=tiny_diffusion["base"],
        generator_options={**opts, "refdsr_weights": branch}))
    assert s["ok"] == 6 and s["failed"] == 0


def test_bf16_autocast_step_is_finite(ds, tiny_diffusion, tmp_path):
    parts = Trainer(cfg(ds, tiny_diffusion, tmp_path, steps=1, precision="bf16")).train_step(0)
    assert np.isfinite(parts["total"])


def test_train_flow_local_then_ray_train_resume(flows_env, ds, tiny_diffusion, tmp_path):
    common = dict(dataset=str(ds[0]), out=str(tmp_path), sd_base=tiny_diffusion["base"],
                  osediff_weights=tiny_diffusion["osediff"], batch_size=1, crop=64, checkpoint_every=1)
    s = train_refdsr(TrainConfig(steps=1, **common))
    assert s["step"] == 1 and s["resumed_from"] == 0
    # data parallel on Ray Train (2 CPU workers, gloo), resuming the local run's checkpoint
    s2 = train_refdsr(TrainConfig(steps=2, **common), TrainScaling(engine="ray", workers=2, cpus_per_worker=0.5))
    assert s2["step"] == 2 and s2["resumed_from"] == 1 and len(s2["history"]) == 1
    # Ray Train's run state stays beside the checkpoints, never in the working directory
    assert (tmp_path / ".ray-train").is_dir() and not os.path.exists(".ray-train")
    assert train_refdsr(TrainConfig(steps=2, **common))["history"] == []  # nothing left to do


def test_checkpoints_on_s3_and_resume_from_there(ds, tiny_diffusion, s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="rasr-train")
    out = "s3://rasr-train/run1"
    first = Trainer(cfg(ds, tiny_diffusion, out, steps=2, checkpoint_every=1))
    first.run()
    rec = latest_checkpoint(out)
    assert rec["step"] == 2 and rec["branch"].startswith("s3://rasr-train/run1/checkpoints/step-0000002/")
    again = Trainer(cfg(ds, tiny_diffusion, out, steps=3, checkpoint_every=1))
    assert again.resume() and again.step == 2
    assert [h["step"] for h in again.run()] == [1, 2, 3]
    branch = latest_checkpoint(out)["branch"]  # a trained branch on S3 loads into the generator
    g = load_generator("refdsr", weights=tiny_diffusion["base"], osediff_weights=tiny_diffusion["osediff"],
                       refdsr_weights=branch)
    assert g.uses_reference


def test_gradient_accumulation_averages_micro_batches(ds, tiny_diffusion, tmp_path):
    """grad_accum=2 of batch 1 takes the mean of two micro-batches' losses as one step's loss."""
    t = Trainer(cfg(ds, tiny_diffusion, tmp_path / "a", steps=1, batch_size=1, grad_accum=2))
    parts = t.train_step(0)
    singles = []
    for micro in range(2):
        u = Trainer(cfg(ds, tiny_diffusion, tmp_path / f"m{micro}", steps=1, batch_size=1))
        lr_up, ref, prompts, gt = u.batch(0, micro)  # the same micro-batches the accumulating run drew
        with __import__("torch").no_grad():
            pred = u.model.forward_train(lr_up, ref, u.model.text_embeddings(prompts))
            singles.append(u.loss.generator_loss(pred, gt)[1]["total"])
    assert parts["total"] == pytest.approx(np.mean(singles), rel=1e-5)
