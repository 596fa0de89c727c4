"""Flow `enhance_archive`: outputs, manifest, exact sizes, idempotent reruns, bad inputs."""

import io

import numpy as np
from PIL import Image

from flows.enhance import enhance_archive
from rasr import manifest
from rasr.manifest import read_manifest
from tests.badinputs import PIXEL_LIMIT, write_bad_inputs
from tests.conftest import tree_snapshot
from rasr.restoration.enhance_run import EnhanceConfig


def odd_archive(folder):
    """Small copies of real photos with odd sizes, in category folders."""
    from rasr.samples import as_rgb, load_photo

    for name, cat, (w, h) in [("chelsea", "animals", (37, 29)), ("coffee", "food", (41, 23)),
                              ("rocket", "machines", (19, 33)), ("astronaut", "people", (31, 31)),
                              ("chelsea", "animals", (45, 27))]:
        (folder / cat).mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(as_rgb(load_photo(name))).resize((w, h), Image.BICUBIC)
        img.save(folder / cat / f"{name}_{w}x{h}.png")


def test_enhance_writes_images_manifest_markers_and_is_idempotent(flows_env, db, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    odd_archive(src)
    s = enhance_archive(str(src), str(out), EnhanceConfig(db=db, generator="bicubic", shard_size=2, top_k=3))
    assert (s["inputs"], s["processed"], s["ok"], s["failed"], s["shards"]) == (5, 5, 5, 0, 3)

    rows = read_manifest(str(out)).to_pylist()
    assert len(rows) == 5
    assert set(manifest.SCHEMA.names) >= {"source_uri", "sha256", "status", "error", "ref_ids", "ref_uris",
                                          "ref_similarities", "generator", "weights_id", "config_hash",
                                          "timings_ms", "output_uri", "width", "height", "out_width", "out_height"}
    for r in rows:
        img = Image.open(r["output_uri"])
        assert img.size == (4 * r["width"], 4 * r["height"]) == (r["out_width"], r["out_height"])
        assert r["output_uri"].startswith(str(out / "images")) and r["output_uri"].endswith(".png")
        assert len(r["ref_ids"]) == 3 and r["ref_similarities"] == sorted(r["ref_similarities"], reverse=True)
        assert r["generator"] == "bicubic" and r["timings_ms"]["total"] > 0
    chelsea = [r for r in rows if r["relpath"].startswith("animals/chelsea")]
    assert all(r["ref_uris"][0].endswith("animals/chelsea.png") for r in chelsea)
    assert len(list((out / "_done").iterdir())) == 3 and len(list((out / "runs").iterdir())) == 1

    before = tree_snapshot(str(out))
    again = enhance_archive(str(src), str(out), EnhanceConfig(db=db, generator="bicubic", shard_size=2, top_k=3))
    assert again["processed"] == 0 and again["already_done"] == 5
    assert again["workers"] == 0  # no actor started: no model was loaded
    assert tree_snapshot(str(out)) == before  # no file written or touched

    # a new photo: only it is processed; a different config redoes everything
    (src / "food" / "extra.png").write_bytes((src / "food" / "coffee_41x23.png").read_bytes())
    third = enhance_archive(str(src), str(out), EnhanceConfig(db=db, generator="bicubic", shard_size=2, top_k=3))
    assert third["processed"] == 1
    assert enhance_archive(str(src), str(out), EnhanceConfig(db=db, generator="bicubic", shard_size=2, top_k=2))["processed"] == 6


def test_bad_inputs_get_error_rows_and_valid_ones_are_enhanced(flows_env, db, tmp_path):
    src, out = tmp_path / "bad", tmp_path / "out"
    expected = write_bad_inputs(str(src))
    s = enhance_archive(str(src), str(out), EnhanceConfig(db=db, generator="bicubic", shard_size=4, max_pixels=PIXEL_LIMIT))
    rows = {r["relpath"]: r for r in read_manifest(str(out)).to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == expected
    assert s["failed"] == sum(v == "error" for v in expected.values()) == 4
    assert s["ok"] == 6 and s["skipped"] == 1
    assert {e["uri"].rsplit("/", 1)[1] for e in s["errors"]} == {k for k, v in expected.items() if v == "error"}
    for name, reason in [("empty.jpg", "empty"), ("truncated.jpg", "truncated"), ("notes.jpg", "not a recognised"),
                         ("huge.png", "above the limit")]:
        assert reason in rows[name]["error"]

    def out_img(name):
        return Image.open(io.BytesIO(open(rows[name]["output_uri"], "rb").read()))

    rot = out_img("rotated.jpg")
    assert rot.size == (4 * 24, 4 * 40)  # EXIF rotation applied before upscaling
    rgba = out_img("rgba.png")
    assert rgba.mode == "RGBA" and rgba.size == (120, 88)
    alpha = np.asarray(rgba)[..., 3]
    assert alpha[:8].mean() < 40 and alpha[-8:].mean() > 215  # the top-to-bottom alpha gradient survives
    assert out_img("gray.png").mode == "L" and out_img("deep16_gray.png").mode == "I;16"  # 16-bit grey stays 16-bit
    assert rows["deep16_gray.png"]["bit_depth"] == rows["deep16.png"]["bit_depth"] == 16
    assert rows["cmyk.jpg"]["source_mode"] == "CMYK" and out_img("cmyk.jpg").mode == "RGB"
    assert out_img("deep16.png").size == (4 * 33, 4 * 25)
