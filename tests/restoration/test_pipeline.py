"""The overlapped EnhanceWorker: the same rows and bytes as the serial one, one row per input whatever
fails, same-size inputs batched, bounded look-ahead; output encodings recorded; batched retrieval."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rasr import catalog
from rasr.restoration import images
from rasr.restoration.worker import EnhanceWorker
from rasr.restoration.enhance_run import EnhanceConfig
from rasr.restoration.generators.base import Generator
from tests.badinputs import PIXEL_LIMIT, write_bad_inputs


class Recorder(Generator):
    """Bicubic x4 that records each batch it gets and can fail on a marked input (a red top-left pixel)."""

    name = "recorder"
    scale = 4
    calls: list = []
    inflight = 0
    max_inflight = 0

    def __init__(self, weights=None, device=None, dtype="fp32", **_):
        pass

    def restore(self, lr, ref, prompts=None):
        Recorder.inflight += 1
        Recorder.max_inflight = max(Recorder.max_inflight, Recorder.inflight)
        try:
            Recorder.calls.append(tuple(lr.shape))
            if ((lr[:, 0, 0, 0] > 0.99) & (lr[:, 1, 0, 0] < 0.01)).any():
                raise RuntimeError("poisoned input")
            time.sleep(0.002)
            return torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        finally:
            Recorder.inflight -= 1


def archive(folder, photos, sizes, poison: set[int] = frozenset()):
    names = [n for n in sorted(photos) if min(photos[n].shape[:2]) >= 64]
    for i, (w, h) in enumerate(sizes):
        img = photos[names[i % len(names)]][:h, :w].copy()
        if i in poison:
            img[0, 0] = (255, 0, 0)
        cat = f"c{i % 3}"
        os.makedirs(folder / cat, exist_ok=True)
        Image.fromarray(img).save(folder / cat / f"img{i:03d}.png")
    return catalog.list_inputs(str(folder))


def run(items, out, overlap, db=None, **cfg):
    Recorder.calls = []
    cfg = EnhanceConfig(generator="tests.restoration.test_pipeline:Recorder", db=db, tile=0, **cfg)
    w = EnhanceWorker(cfg, io_threads=3, overlap=overlap)
    try:
        rows = w.process(items, str(out), "s0", "r0")
    finally:
        w.close()
    return rows


VOLATILE = ("timings_ms", "processed_at", "output_uri", "worker")


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def gallery_db(tmp_path_factory, photos):
    """The bundled photos embedded with the library's own code (no engines)."""
    from rasr.retrieval.encoders import load_encoder
    from rasr.retrieval.gallery import Gallery
    from rasr.retrieval.embedding import Embedder

    root = tmp_path_factory.mktemp("gallery")
    for i, (name, img) in enumerate(sorted(photos.items())):
        os.makedirs(root / "src" / f"c{i % 3}", exist_ok=True)
        Image.fromarray(img).save(root / "src" / f"c{i % 3}" / f"{name}.png")
    enc = load_encoder("efficientnet-lite0")
    rows, _ = Embedder(enc).embed(catalog.list_inputs(str(root / "src")))
    Gallery.create_or_open(str(root / "db"), "g", enc.id, enc.dim).upsert(rows)
    return str(root / "db")


def test_overlap_gives_the_same_rows_and_bytes(tmp_path, photos, gallery_db):
    sizes = [(32, 24)] * 7 + [(40, 40)] * 5 + [(24, 32), (33, 17)]
    items = archive(tmp_path / "in", photos, sizes, poison={3})
    write_bad_inputs(str(tmp_path / "in" / "bad"))
    items = catalog.list_inputs(str(tmp_path / "in"))
    kw = dict(max_pixels=PIXEL_LIMIT, batch_size=4, db=gallery_db, top_k=3, category_filter=True)
    serial = run(items, tmp_path / "a", overlap=False, **kw)
    piped = run(items, tmp_path / "b", overlap=True, **kw)
    assert [r["relpath"] for r in piped] == [i.relpath for i in items]  # one row per input, in order
    assert comparable(piped) == comparable(serial)
    poisoned = next(r for r in piped if r["relpath"].endswith("img003.png"))
    assert poisoned["status"] == "error" and "poisoned input" in poisoned["error"]
    for r in piped:
        if r["status"] == "ok":
            twin = tmp_path / "a" / os.path.relpath(r["output_uri"], tmp_path / "b")
            assert twin.read_bytes() == Path(r["output_uri"]).read_bytes()
            assert r["output_encoding"] == "png level=1" + (" +alpha" if r["alpha"] else "")
    good = [r for r in piped if "/bad/" not in r["source_uri"]]
    assert sum(r["status"] == "ok" for r in good) == len(sizes) - 1
    for r in good:  # one batched search per batch, each row with its own category filter
        assert len(r["ref_ids"]) >= 1 and set(r["ref_categories"]) == {r["relpath"].split("/")[0]}


def test_same_size_inputs_are_batched_and_one_batch_runs_at_a_time(tmp_path, photos):
    sizes = [(32, 24), (40, 40)] * 8  # interleaved sizes: the batcher regroups them
    items = archive(tmp_path / "in", photos, sizes)
    Recorder.max_inflight = 0
    rows = run(items, tmp_path / "o", overlap=True, batch_size=4)
    assert all(r["status"] == "ok" for r in rows)
    assert sorted(Recorder.calls) == sorted([(4, 3, 24, 32)] * 2 + [(4, 3, 40, 40)] * 2)
    assert Recorder.max_inflight == 1


def test_reading_runs_ahead_but_stays_bounded(tmp_path, photos, monkeypatch):
    items = archive(tmp_path / "in", photos, [(32, 24)] * 40)
    started, restored = [], []
    real_load = EnhanceWorker._load

    def load(self, item, row):
        started.append(item.relpath)
        return real_load(self, item, row)

    def restore(self, lrs, refs=None, prompts=None):
        restored.append(len(started))
        time.sleep(0.02)
        return [np.zeros((lr.shape[0] * 4, lr.shape[1] * 4, 3), np.uint8) for lr in lrs]

    monkeypatch.setattr(EnhanceWorker, "_load", load)
    from rasr.restoration.generators import base

    monkeypatch.setattr(base.Restorer, "restore", restore)
    cfg = EnhanceConfig(generator="bicubic", tile=0, batch_size=4)
    w = EnhanceWorker(cfg, io_threads=2)
    rows = w.process(items, str(tmp_path / "o"), "s", "r")
    w.close()
    assert len(rows) == 40 and all(r["status"] == "ok" for r in rows)
    # when the model starts a batch, reading is ahead of it, but never more than look-ahead + held
    assert any(n > (i + 1) * 4 for i, n in enumerate(restored))  # reading did run ahead of the model
    for i, n in enumerate(restored):
        assert n <= (i + 1) * 4 + w.lookahead + 2 * w.batch_size


def test_output_encodings_are_recorded_and_lossless_ones_keep_pixels(tmp_path, photos):
    items = archive(tmp_path / "in", photos, [(32, 24)] * 2)
    expect = {("png", 6): "png level=6", ("webp-lossless", 95): "webp lossless", ("jpg", 80): "jpg quality=80"}
    base_rows = run(items, tmp_path / "png1", overlap=True)
    ref = np.asarray(Image.open(base_rows[0]["output_uri"]))
    for (fmt, q), text in expect.items():
        kw = {"png_level": 6} if fmt == "png" else {"quality": q}
        rows = run(items, tmp_path / fmt, overlap=True, output_format=fmt, **kw)
        assert rows[0]["status"] == "ok" and rows[0]["output_encoding"] == text
        assert rows[0]["output_uri"].endswith(".webp" if fmt.startswith("webp") else f".{fmt}")
        got = np.asarray(Image.open(rows[0]["output_uri"]).convert("RGB"))
        if fmt != "jpg":
            np.testing.assert_array_equal(got, ref)


def test_png_level_does_not_change_the_config_hash_but_lossy_quality_does():
    base = EnhanceConfig()
    assert EnhanceConfig(png_level=6).hash() == base.hash()
    assert EnhanceConfig(output_format="jpg").hash() == EnhanceConfig(output_format="jpg", quality=95).hash()
    assert EnhanceConfig(output_format="jpg", quality=80).hash() != EnhanceConfig(output_format="jpg").hash()
    with pytest.raises(ValueError, match="0-9"):
        images.Encoding("png", png_level=12)


def test_concurrent_calls_share_the_model_safely(tmp_path, photos):
    items = archive(tmp_path / "in", photos, [(32, 24)] * 24)
    Recorder.max_inflight = 0
    cfg = EnhanceConfig(generator="tests.restoration.test_pipeline:Recorder", tile=0, batch_size=4)
    w = EnhanceWorker(cfg, io_threads=2)
    out = {}
    threads = [threading.Thread(target=lambda k, c: out.__setitem__(k, w.process(c, str(tmp_path / "o"), "s", "r")),
                                args=(k, items[k::2])) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert sorted(r["relpath"] for rs in out.values() for r in rs) == sorted(i.relpath for i in items)
    assert all(r["status"] == "ok" for rs in out.values() for r in rs)
    assert Recorder.max_inflight == 1
