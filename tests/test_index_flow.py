"""Flow `index_gallery`: incremental re-indexing embeds exactly what changed."""

import os
import shutil

import numpy as np
from PIL import Image

from flows.index import index_gallery
from rasr.gallery import Gallery
from rasr.samples import load_photo


def test_reindex_embeds_only_new_and_changed_files(flows_env, sample_dirs, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(sample_dirs["gallery"], gallery)
    db = str(tmp_path / "db")
    first = index_gallery(str(gallery), db, shard_size=8, batch_size=8)
    n = len([f for _, _, fs in os.walk(gallery) for f in fs])
    assert first["embedded"] == n == 20 and first["failed"] == 0

    # add one file, change one, delete one
    Image.fromarray(load_photo("chelsea")[::-1].copy()).save(gallery / "animals" / "chelsea_flipped.png")
    coffee = gallery / "food" / "coffee.png"
    Image.fromarray(np.ascontiguousarray(load_photo("coffee")[50:, 80:])).save(coffee)
    os.utime(coffee, (1_700_000_000, 1_700_000_000))  # mtime differs even on coarse filesystems
    (gallery / "textures" / "brick.png").unlink()

    second = index_gallery(str(gallery), db, shard_size=8, batch_size=8)
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

    third = index_gallery(str(gallery), db)
    assert third["embedded"] == 0 and third["deleted"] == 0


def test_bad_gallery_files_are_reported_not_fatal(flows_env, tmp_path):
    gallery = tmp_path / "g" / "misc"
    gallery.mkdir(parents=True)
    Image.fromarray(load_photo("rocket")).save(gallery / "rocket.jpg")
    (gallery / "broken.jpg").write_bytes(b"not an image")
    s = index_gallery(str(tmp_path / "g"), str(tmp_path / "db"))
    assert s["embedded"] == 1 and s["failed"] == 1
    assert s["errors"][0]["uri"].endswith("broken.jpg") and "not a recognised image" in s["errors"][0]["error"]
