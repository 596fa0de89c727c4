"""Flow `index_gallery`: incremental re-indexing embeds exactly what changed."""

import os
import shutil

import numpy as np
from PIL import Image

from flows.index import index_gallery
from rasr.retrieval.gallery import Gallery
from rasr.samples import load_photo
from rasr.retrieval.index_run import IndexConfig


def test_reindex_embeds_only_new_and_changed_files(flows_env, sample_dirs, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(sample_dirs["gallery"], gallery)
    db = str(tmp_path / "db")
    first = index_gallery(str(gallery), IndexConfig(db=db, shard_size=8, batch_size=8))
    n = len([f for _, _, fs in os.walk(gallery) for f in fs])
    assert first["embedded"] == n == 20 and first["failed"] == 0
    assert first["duplicates"] == 0 and first["excluded_small"] == 0  # hygiene runs in the flow
    assert set(first["hygiene"]) == {"duplicates", "near_duplicates", "low_quality", "excluded_small"}

    # add one file, change one, delete one
    Image.fromarray(load_photo("chelsea")[::-1].copy()).save(gallery / "animals" / "chelsea_flipped.png")
    coffee = gallery / "food" / "coffee.png"
    Image.fromarray(np.ascontiguousarray(load_photo("coffee")[50:, 80:])).save(coffee)
    os.utime(coffee, (1_700_000_000, 1_700_000_000))  # mtime differs even on coarse filesystems
    (gallery / "textures" / "brick.png").unlink()

    second = index_gallery(str(gallery), IndexConfig(db=db, shard_size=8, batch_size=8))
    assert second["embedded"] == 2
    assert second["deleted"] == 1 and second["unchanged"] == 18

    g = Gallery.open(db)
    uris = set(g.files())
    current = {str(p) for p in gallery.rglob("*.png")}
    assert uris == current and g.count() == 20
    assert {r for r in g.table.to_arrow().column("category").to_pylist()} >= {"animals", "food", "textures"}
    # the changed file's row carries its new content hash
    import hashlib

    assert g.files()[str(coffee)][0] == hashlib.sha256(coffee.read_bytes()).hexdigest()

    third = index_gallery(str(gallery), IndexConfig(db=db))
    assert third["embedded"] == 0 and third["deleted"] == 0


def test_bad_gallery_files_are_reported_not_fatal(flows_env, tmp_path):
    gallery = tmp_path / "g" / "misc"
    gallery.mkdir(parents=True)
    Image.fromarray(load_photo("rocket")).save(gallery / "rocket.jpg")
    (gallery / "broken.jpg").write_bytes(b"not an image")
    s = index_gallery(str(tmp_path / "g"), IndexConfig(db=str(tmp_path / "db")))
    assert s["embedded"] == 1 and s["failed"] == 1
    assert s["errors"][0]["uri"].endswith("broken.jpg") and "not a recognised image" in s["errors"][0]["error"]


def test_gallery_hygiene_reports_duplicates_near_duplicates_and_weak_references(tmp_path):
    """What `rasr index` runs after embedding (rasr.retrieval.embedding.Embedder + index_run.hygiene), without the engines."""
    from rasr import catalog
    from rasr.retrieval.encoders import load_encoder
    from rasr.retrieval.embedding import Embedder
    from rasr.retrieval.index_run import hygiene

    root = tmp_path / "g"
    misc = root / "misc"
    misc.mkdir(parents=True)
    rocket = load_photo("rocket")
    Image.fromarray(rocket).save(misc / "rocket.png")
    shutil.copy(misc / "rocket.png", misc / "rocket_copy.png")                 # the same bytes
    Image.fromarray(rocket).save(misc / "rocket_q95.jpg", quality=95)         # the same photo, other bytes
    Image.fromarray(load_photo("astronaut")).save(misc / "astronaut_q8.jpg", quality=8)  # blocky
    Image.fromarray(load_photo("coffee")[:90, :120].copy()).save(misc / "small.png")
    Image.fromarray(load_photo("coffee")[:20, :24].copy()).save(misc / "tiny.png")        # under 32 px
    Image.fromarray(load_photo("chelsea")).save(misc / "chelsea.png")
    enc = load_encoder("efficientnet-lite0", device="cpu")
    g = Gallery.create_or_open(str(tmp_path / "db"), "gallery", enc.id, enc.dim)
    rows, errors = Embedder(enc, preprocessing=g.preprocessing, views=g.views, min_side=32).embed(
        catalog.list_inputs(str(root)))
    g.upsert(rows)
    assert len(rows) == 6 and len(errors) == 1 and errors[0]["excluded"] and errors[0]["uri"].endswith("tiny.png")
    report = hygiene(g, rows, near=0.9)
    dup = report["duplicates"]
    assert len(dup) == 1
    assert {os.path.basename(dup[0]["uri"]), os.path.basename(dup[0]["of"])} == {"rocket.png", "rocket_copy.png"}
    near = {os.path.basename(d["uri"]) for d in report["near_duplicates"]}
    assert "rocket_q95.jpg" in near and "chelsea.png" not in near
    low = {os.path.basename(d["uri"]): d["reason"] for d in report["low_quality"]}
    assert low["small.png"].startswith("small: 120x90")
    assert low["astronaut_q8.jpg"].startswith("heavily compressed: JPEG quality ~")  # estimated from its tables
    assert int(low["astronaut_q8.jpg"].rsplit("~", 1)[1]) < 20 and "rocket_q95.jpg" not in low
    quality = dict(zip(*g.table.to_arrow().select(["uri", "quality"]).to_pydict().values()))
    assert quality[str(misc / "chelsea.png")] == ""
    assert "near duplicate of" in quality[str(misc / "rocket_q95.jpg")]
