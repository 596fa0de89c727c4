"""Same-scene reference transfer (rasr/restoration/transfer.py, issue 24), checked against what rasr did not compute itself.

- registration against a homography the test drew (the true geometry, not rasr's estimate);
- scikit-image's PSNR/SSIM on Y against the real second view of a real two-view pair (scikit-image's stereo
  motorcycle: two cameras, real parallax);
- different scenes never verify, and their outputs are byte for byte those of --reference-transfer off;
- what the output carries is read back by exiv2 (pyexiv2), not by rasr's writer.
"""

from __future__ import annotations

import glob
import os

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rasr.restoration import transfer
from rasr.restoration.enhance_run import EnhanceConfig


def _crop4(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    return np.ascontiguousarray(a[:h - h % 4, :w - w % 4])


def _lr(hr: np.ndarray) -> np.ndarray:
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // 4, h // 4), Image.BICUBIC))


def _bicubic(lr: np.ndarray) -> np.ndarray:
    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * 4, h * 4), Image.BICUBIC))


def _psnr_y(a, b) -> float:
    return float(peak_signal_noise_ratio(rgb2ycbcr(b)[..., 0], rgb2ycbcr(a)[..., 0], data_range=255))


def _ssim_y(a, b) -> float:
    return float(structural_similarity(rgb2ycbcr(b)[..., 0], rgb2ycbcr(a)[..., 0], data_range=255,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


@pytest.fixture(scope="module")
def motorcycle():
    """(left view as ground truth, right view as the reference): two real cameras."""
    left, right, _ = skimage.data.stereo_motorcycle()
    return _crop4(left), right


def test_registration_recovers_a_known_viewpoint_change(chelsea):
    """The reference is chelsea seen from a viewpoint the test chose; the estimated homography maps the reference
    within a pixel or two of where the test put it, though only the x4 LR of the view is matched."""
    hr = _crop4(chelsea)
    h, w = hr.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[30, 12], [w * 1.25 + 10, 0], [w * 1.2 + 25, h * 1.22], [0, h * 1.3]])
    A = cv2.getPerspectiveTransform(src, dst)  # view -> reference
    ref = cv2.warpPerspective(hr, A, (int(dst[:, 0].max()) + 1, int(dst[:, 1].max()) + 1), flags=cv2.INTER_CUBIC)
    cands = [("id-ref", "mem://ref", transfer.features(ref))]
    match, inliers = transfer.verify(transfer.query_features(_lr(hr), 4), cands)
    assert match is not None and match.index == 0 and inliers >= transfer.MIN_INLIERS
    pts = np.float32([[40, 40], [w - 40, 40], [w - 40, h - 40], [40, h - 40], [w / 2, h / 2]]).reshape(-1, 1, 2)
    truth = cv2.perspectiveTransform(pts, A)           # where each view point lies in the reference ...
    back = cv2.perspectiveTransform(truth, match.homography)  # ... mapped back by rasr's estimate
    err = np.abs(back - pts).max()
    assert err < 2.0, f"registration off by {err:.2f} px"


def test_real_two_view_pair_gains_over_bicubic_and_leaves_the_rest_untouched(motorcycle):
    hr, ref = motorcycle
    lr = _lr(hr)
    out = _bicubic(lr)
    match, _ = transfer.verify(transfer.query_features(lr, 4), [("r", "u", transfer.features(ref))])
    assert match is not None
    done = transfer.transfer(out, lr, ref, match.homography)
    again, _ = transfer.verify(transfer.query_features(lr, 4), [("r", "u", transfer.features(ref))])
    assert np.array_equal(transfer.transfer(out, lr, ref, again.homography).pixels, done.pixels)  # reruns: same bytes
    gain = _psnr_y(done.pixels, hr) - _psnr_y(out, hr)
    assert gain > 1.0, f"PSNR-Y gain {gain:.2f} dB"
    assert _ssim_y(done.pixels, hr) > _ssim_y(out, hr)
    assert 0.3 < done.coverage <= 1.0
    untouched = done.mask == 0
    assert untouched.any() and np.array_equal(done.pixels[untouched], out[untouched])  # not one value elsewhere
    # 16 bits in, 16 bits out; the same detail (to 8-bit rounding)
    deep = transfer.transfer(out.astype(np.uint16) * 257, lr.astype(np.uint16) * 257, ref, match.homography)
    assert deep.pixels.dtype == np.uint16
    assert np.abs(deep.pixels.astype(np.float64) / 257 - done.pixels).max() <= 1.0


def test_different_scenes_do_not_verify(photos, motorcycle):
    """Real photos against references of other scenes: the best plausible count stays under the threshold."""
    refs = [(n, n, transfer.features(photos[n])) for n in sorted(photos)[:3]] + [
        ("motorcycle", "m", transfer.features(motorcycle[1]))]
    for name in sorted(photos)[3:7]:
        hr = _crop4(photos[name])
        match, best = transfer.verify(transfer.query_features(_lr(hr), 4), refs)
        assert match is None and best < transfer.MIN_INLIERS, (name, best)


def test_features_round_trip_and_cache(tmp_path, motorcycle):
    from rasr import storage

    ref = motorcycle[1]
    path = tmp_path / "ref.png"
    Image.fromarray(ref).save(path)
    cache = transfer.FeatureCache(str(tmp_path / "db"))
    f = cache.get("ab" * 32, str(path))
    assert cache.computed == 1 and storage.exists(cache.uri("ab" * 32))
    again = transfer.FeatureCache(str(tmp_path / "db")).get("ab" * 32, "/nonexistent/never/read.png")
    np.testing.assert_array_equal(again.points, f.points)
    np.testing.assert_array_equal(again.descriptors, f.descriptors)
    assert again.size == ref.shape[:2]


def test_config_hash_off_is_the_hash_of_runs_before_the_option():
    base = EnhanceConfig(db="refs.lance")
    off = EnhanceConfig(db="refs.lance", reference_transfer="off")
    before = base.identity()
    before.pop("reference_transfer")
    from rasr import catalog

    assert off.hash() == catalog.config_hash(before)
    assert base.hash() != off.hash()
    assert EnhanceConfig().hash() == EnhanceConfig(reference_transfer="off").hash()  # no gallery: no effect


@pytest.fixture(scope="module")
def transfer_runs(tmp_path_factory, motorcycle, photos):
    """A gallery (the motorcycle's right view + two other scenes), an archive (its left view and two other scenes
    at x4 LR), enhanced by the bicubic generator with transfer auto and off."""
    from rasr import catalog
    from rasr.retrieval.encoders import load_encoder
    from rasr.restoration.worker import EnhanceWorker
    from rasr.retrieval.gallery import Gallery
    from rasr.retrieval.embedding import Embedder

    root = tmp_path_factory.mktemp("transfer")
    names = sorted(photos)
    (root / "gallery" / "scenes").mkdir(parents=True)
    (root / "archive" / "scenes").mkdir(parents=True)
    Image.fromarray(motorcycle[1]).save(root / "gallery" / "scenes" / "motorcycle_right.png")
    for n in names[:2]:
        Image.fromarray(photos[n]).save(root / "gallery" / "scenes" / f"{n}.png")
    Image.fromarray(_lr(motorcycle[0])).save(root / "archive" / "scenes" / "motorcycle_left.png")
    for n in names[2:4]:
        Image.fromarray(_lr(_crop4(photos[n]))).save(root / "archive" / "scenes" / f"{n}.png")
    db = str(root / "refs.lance")
    enc = load_encoder("efficientnet-lite0")
    rows, _ = Embedder(enc).embed(catalog.list_inputs(str(root / "gallery")))
    Gallery.create_or_open(db, "gallery", enc.id, enc.dim).upsert(rows)
    items = catalog.list_inputs(str(root / "archive"))
    runs = {}
    for mode in ("off", "auto"):
        w = EnhanceWorker(EnhanceConfig(generator="bicubic", db=db, top_k=3, reference_transfer=mode))
        out = str(root / f"out-{mode}")
        runs[mode] = (out, {r["relpath"]: r for r in w.process(items, out, "s0", mode)}, w)
        w.close()
    return runs


def _xmp(path: str) -> dict:
    import pyexiv2

    img = pyexiv2.Image(path)
    try:
        return img.read_xmp()
    finally:
        img.close()


@pytest.mark.integration  # whole EnhanceWorker / EvalWorker runs (8 s): not in the fast tier
def test_enhance_transfers_only_from_a_verified_same_scene_reference(transfer_runs, motorcycle):
    (_, on, worker), (_, off, _) = transfer_runs["auto"], transfer_runs["off"]
    pos = on["scenes/motorcycle_left.png"]
    assert pos["status"] == "ok" and pos["ref_match"] == "same_scene" and pos["ref_used"]
    assert pos["ref_inliers"] >= transfer.MIN_INLIERS and 0.3 < pos["ref_coverage"] <= 1.0
    matched = pos["ref_ids"].index(pos["ref_matched_id"])
    assert pos["ref_uris"][matched].endswith("motorcycle_right.png")
    hr = motorcycle[0]
    a = np.asarray(Image.open(pos["output_uri"]).convert("RGB"))
    b = np.asarray(Image.open(off["scenes/motorcycle_left.png"]["output_uri"]).convert("RGB"))
    assert _psnr_y(a, hr) - _psnr_y(b, hr) > 1.0
    # the output says it is a composite of two captures (read back by exiv2)
    xmp = _xmp(pos["output_uri"])
    assert xmp["Xmp.iptcExt.DigitalSourceType"].endswith("/compositeCapture")
    params = xmp["Xmp.xmpMM.History[1]/stEvt:parameters"]
    assert pos["ref_matched_id"] in params and "composite of two captures" in params
    # with off: retrieved, not verified, nothing taken
    assert off["scenes/motorcycle_left.png"]["ref_match"] == "semantic"
    assert not off["scenes/motorcycle_left.png"]["ref_used"]
    assert off["scenes/motorcycle_left.png"]["ref_inliers"] is None
    # different scenes: the same bytes as off (provenance included)
    for rel, row in on.items():
        if rel == "scenes/motorcycle_left.png":
            continue
        assert row["ref_match"] == "semantic" and not row["ref_used"] and row["ref_inliers"] < transfer.MIN_INLIERS
        with open(row["output_uri"], "rb") as f1, open(off[rel]["output_uri"], "rb") as f2:
            assert f1.read() == f2.read(), rel
    # the gallery's features were cached beside it, once per reference
    assert len(glob.glob(os.path.join(worker.cfg.db, "_features", transfer.FEATURES, "*", "*.npz"))) == 3


@pytest.mark.integration  # whole EnhanceWorker / EvalWorker runs (8 s): not in the fast tier
def test_results_page_shows_the_aligned_reference_and_mask(transfer_runs):
    from rasr import catalog, manifest
    from rasr.results import results_page

    out, rows, _ = transfer_runs["auto"]
    manifest.write_rows(manifest.shard_table_uri(out, catalog.MANIFEST_DIR, "s0"), list(rows.values()))
    results_page.write_report(out)
    pos = rows["scenes/motorcycle_left.png"]
    preview = os.path.join(out, results_page.REPORT_DIR, results_page.transfer_path(pos))
    sheet = np.asarray(Image.open(preview).convert("RGB"))
    tw = sheet.shape[1] // 2
    mask_half = sheet[:, tw:].astype(float)
    assert mask_half.max() > 200 and mask_half.min() < 60  # confident and not-confident areas both shown
    pages = "".join(open(p).read() for p in glob.glob(os.path.join(out, results_page.REPORT_DIR, "**", "*.*"),
                                                       recursive=True) if p.endswith((".html", ".js", ".json")))
    assert results_page.transfer_path(pos) in pages and "same-scene" in pages
    for rel, row in rows.items():
        if rel != "scenes/motorcycle_left.png":
            assert results_page.transfer_path(row) not in pages


@pytest.mark.integration  # whole EnhanceWorker / EvalWorker runs (8 s): not in the fast tier
def test_evaluation_table1_gains_a_transfer_row_per_method(transfer_runs, motorcycle, tmp_path):
    """EvalWorker scores `<method> (transfer)` next to the method; PSNR recomputed here with scikit-image."""
    import pandas as pd

    from rasr import catalog
    from rasr.results import evaluation_report
    from rasr.research.evaluation import EvalConfig, EvalWorker

    hr_dir = tmp_path / "hr" / "scenes"
    hr_dir.mkdir(parents=True)
    Image.fromarray(motorcycle[0]).save(hr_dir / "motorcycle_left.png")
    db = transfer_runs["auto"][2].cfg.db
    cfg = EvalConfig(methods=["bicubic"], db=db, metrics=["psnr", "ssim"],
                     lr_files={"scenes/motorcycle_left.png": str(tmp_path / "lr.png")})
    Image.fromarray(_lr(motorcycle[0])).save(tmp_path / "lr.png")
    rows = EvalWorker(cfg).process(catalog.list_inputs(str(tmp_path / "hr")), str(tmp_path / "ev"), "s0", "r")["manifest"]
    by_mode = {r["ref_mode"]: r for r in rows}
    assert set(by_mode) == {"none", "transfer"}
    t = by_mode["transfer"]
    assert t["status"] == "ok" and t["ref_match"] == "same_scene" and t["ref_uri"].endswith("motorcycle_right.png")
    sr = np.asarray(Image.open(t["sr_uri"]).convert("RGB"))
    plain = np.asarray(Image.open(by_mode["none"]["sr_uri"]).convert("RGB"))
    assert _psnr_y(sr, motorcycle[0]) > _psnr_y(plain, motorcycle[0]) + 1.0
    summary = evaluation_report.summarize(pd.DataFrame(rows))
    table = evaluation_report.table1_markdown(summary, {"psnr": "ok", "ssim": "ok"}, "bicubic")
    assert "| bicubic (transfer) |" in table


@pytest.mark.integration  # one more EnhanceWorker pass (~3 s)
def test_a_failing_verification_or_transfer_costs_the_transfer_not_the_output(transfer_runs, monkeypatch):
    from rasr import catalog
    from rasr.restoration.worker import EnhanceWorker

    out_off, off, _ = transfer_runs["off"]
    db = transfer_runs["auto"][2].cfg.db
    archive = os.path.join(os.path.dirname(db), "archive")
    for broken in ("verify", "transfer"):
        def boom(*a, _what=broken, **k):
            raise RuntimeError(f"{_what} broke")
        monkeypatch.setattr(transfer, broken, boom)
        w = EnhanceWorker(EnhanceConfig(generator="bicubic", db=db, top_k=3))
        out = os.path.join(os.path.dirname(db), f"out-broken-{broken}")
        rows = {r["relpath"]: r for r in w.process(catalog.list_inputs(archive), out, "s0", "x")}
        w.close()
        monkeypatch.undo()
        pos = rows["scenes/motorcycle_left.png"]
        assert all(r["status"] == "ok" for r in rows.values())
        assert f"{broken} broke" in pos["notes"] and not pos["ref_used"] and pos["ref_match"] == "semantic"
        with open(pos["output_uri"], "rb") as a, open(off["scenes/motorcycle_left.png"]["output_uri"], "rb") as b:
            assert a.read() == b.read()  # exactly the output without transfer
