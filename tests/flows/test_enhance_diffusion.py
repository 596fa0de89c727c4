"""`--generator refdsr|osediff` in the enhance flow: Ray actors load the model once, the manifest records
weights identity, fusion scale and prompt, and references below --min-similarity run the no-reference path."""

import hashlib
import json
import os

import pytest
from PIL import Image

from flows.enhance import enhance_archive
from rasr.restoration.generators import load_generator
from rasr.manifest import read_manifest
from tasks.cluster import Cluster
from rasr.restoration.enhance_run import EnhanceConfig

THRESHOLD = 0.75  # the sample's six photos find references at 0.67-0.84: three on each side


def test_refdsr_in_the_pipeline(flows_env, db, sample_dirs, tiny_diffusion, tmp_path):
    out = tmp_path / "out"
    opts = {"osediff_weights": tiny_diffusion["osediff"], "refdsr_weights": tiny_diffusion["branch"],
            "fusion_scale": 0.7}
    s = enhance_archive(sample_dirs["archive"], str(out), EnhanceConfig(
        db=db, generator="refdsr", generator_weights=tiny_diffusion["base"], generator_options=opts,
        min_similarity=THRESHOLD, shard_size=3, batch_size=2), cluster=Cluster(gpus_per_worker=0))
    assert s["ok"] == 6 and s["failed"] == 0 and s["shards"] == 2 and s["workers"] == 1
    rows = read_manifest(str(out)).to_pylist()
    expected_id = load_generator("refdsr", weights=tiny_diffusion["base"], **opts).weights_id
    assert {r["weights_id"] for r in rows} == {expected_id} and len(expected_id) == 16
    assert {r["worker"] for r in rows} == {s["placement"][0]["host"] + ":" + str(s["placement"][0]["pid"])}
    used = [r for r in rows if r["ref_used"]]
    unused = [r for r in rows if not r["ref_used"]]
    assert used and unused  # the sample has references on both sides of the threshold
    for r in rows:
        assert (r["ref_similarities"][0] >= THRESHOLD) == r["ref_used"]
        assert r["fusion_scale"] == pytest.approx(0.7) and r["generator"] == "refdsr"
        assert Image.open(r["output_uri"]).size == (4 * r["width"], 4 * r["height"])
    for r in rows:  # category tagger: the input's folder, then the reference's gallery category (RASR's prompt)
        tags = [r["relpath"].split("/")[0]] + ([r["ref_categories"][0]] if r["ref_used"] else [])
        assert r["prompt"] == ", ".join(dict.fromkeys(tags)) and r["tagger"] == "category"


def test_osediff_in_the_pipeline(flows_env, sample_dirs, tiny_diffusion, tmp_path):
    s = enhance_archive(sample_dirs["archive"], str(tmp_path / "out"), EnhanceConfig(
        generator="osediff", generator_weights=tiny_diffusion["base"],
        generator_options={"osediff_weights": tiny_diffusion["osediff"]}, shard_size=6))
    assert s["ok"] == 6
    rows = read_manifest(str(tmp_path / "out")).to_pylist()
    assert all(not r["ref_used"] and r["fusion_scale"] is None for r in rows)
    for r in rows:  # OSEDiff's own prompt format (test_osediff.py: f"{tags}, {args.prompt},"), the input's folder as tag
        assert r["prompt"] == f"{r['relpath'].split('/')[0]}, {''},"
    files = json.loads(rows[0]["weights_files"])  # which exact files ran: the SD folder's and the pkl
    assert files["osediff/osediff.pkl"] == hashlib.sha256(open(tiny_diffusion["osediff"], "rb").read()).hexdigest()
    unet_file = os.path.join(tiny_diffusion["base"], "unet", "diffusion_pytorch_model.safetensors")
    assert files["sd/unet/diffusion_pytorch_model.safetensors"] == hashlib.sha256(open(unet_file, "rb").read()).hexdigest()


def test_refdsr_without_a_gallery_is_refused(flows_env, sample_dirs, tiny_diffusion, tmp_path):
    with pytest.raises(Exception, match="--db"):
        enhance_archive(sample_dirs["archive"], str(tmp_path / "out"), EnhanceConfig(
            generator="refdsr", generator_weights=tiny_diffusion["base"],
            generator_options={"osediff_weights": tiny_diffusion["osediff"], "refdsr_weights": tiny_diffusion["branch"]}))
