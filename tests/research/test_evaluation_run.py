"""The test-set side of evaluation without Prefect or Ray: pairs CSV, LR matching, scoring by name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from rasr import catalog
from rasr.research import evaluation_run, scoring


def write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_pairs_csv_matches_by_path_stem_or_file_name_and_resolves_relative_refs(tmp_path, chelsea):
    hr = tmp_path / "hr"
    write(hr / "animals" / "cat.png", chelsea[:64, :64])
    write(hr / "food" / "cup.png", chelsea[64:128, :64])
    items = [i for i in catalog.list_inputs(str(hr)) if i.is_image]
    csv_path = tmp_path / "pairs" / "pairs.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("image,ref\nanimals/cat,refs/a.png\ncup.png,/abs/b.png\n")
    pairs = evaluation_run.read_pairs(str(csv_path), items)
    assert pairs == {"animals/cat.png": str(tmp_path / "pairs" / "refs" / "a.png"), "food/cup.png": "/abs/b.png"}
    csv_path.write_text("image,ref\ndog.png,x.png\n")
    with pytest.raises(ValueError, match="'dog.png' is not in the test set"):
        evaluation_run.read_pairs(str(csv_path), items)
    csv_path.write_text("img,reference\n")
    with pytest.raises(ValueError, match="columns image,ref"):
        evaluation_run.read_pairs(str(csv_path), items)


def test_lr_files_match_by_relative_path_without_extension(tmp_path, chelsea):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    write(hr / "a" / "x.png", chelsea[:32, :32])
    write(hr / "a" / "y.png", chelsea[:32, :32])
    write(lr / "a" / "x.jpg", chelsea[:8, :8])
    items = [i for i in catalog.list_inputs(str(hr)) if i.is_image]
    assert evaluation_run.match_lr(str(lr), items) == {"a/x.png": str(lr / "a" / "x.jpg")}
    with pytest.raises(ValueError, match="no LR file"):
        evaluation_run.match_lr(str(lr), [i for i in items if i.relpath == "a/y.png"])


def test_scoring_by_name_agrees_with_scikit_image(tmp_path, chelsea):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    clean = chelsea[:96, :96]
    noisy = np.clip(clean.astype(int) + np.random.default_rng(0).integers(-20, 21, clean.shape), 0, 255).astype(np.uint8)
    write(gt / "cats" / "c.png", clean)
    write(pred / "c.png", noisy)          # matched by file name
    write(pred / "stray.png", noisy)      # no ground truth
    pairs, unmatched = scoring.pair_by_name(str(pred), str(gt))
    assert [(p.relpath, g.relpath) for p, g in pairs] == [("c.png", "cats/c.png")] and unmatched == ["stray.png"]
    df, status = scoring.score_pairs(pairs, ["psnr"], crop_border=0)
    assert status["psnr"] == "ok" and df.loc[0, "status"] == "ok"
    # PSNR on the Y channel (BT.601), as the paper's protocol: scikit-image on the same Y planes
    def y(rgb):
        return (16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255) / 255
    expected = peak_signal_noise_ratio(y(clean / 1.0), y(noisy / 1.0), data_range=1.0)
    assert df.loc[0, "psnr"] == pytest.approx(expected, abs=1e-3)
    means, summary = scoring.score_summary(df, status, ["psnr"], str(pred), str(gt))
    assert means["psnr"] == pytest.approx(df["psnr"].mean()) and int(summary.loc[0, "images"]) == 1
