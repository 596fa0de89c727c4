"""Flow `evaluate`: the paper's tables on a test set, per-image Parquet, the HTML report; `rasr metrics`."""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.evaluate import evaluate, score_folder
from rasr import catalog, manifest
from rasr.research.evaluation import EVAL_SCHEMA, RETRIEVAL_SCHEMA, EvalConfig, prepare_hr
from rasr.research.metrics import ScoreConfig
from rasr.samples import as_rgb, load_photo
from tests import browser

TEST_SET = {"animals": ["chelsea"], "food": ["coffee"], "people": ["astronaut"], "machines": ["rocket"]}


@pytest.fixture(scope="module")
def hr_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    for cat, names in TEST_SET.items():
        (root / cat).mkdir()
        for n in names:
            Image.fromarray(as_rgb(load_photo(n))).save(root / cat / f"{n}.png")
    return root


@pytest.fixture(scope="module")
def result(flows_env, hr_set, db, tiny_diffusion, niqe_prior, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    pairs = out / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "ref"])
        w.writerow(["chelsea.png", str(hr_set / "food" / "coffee.png")])
    res = evaluate(str(hr_set), str(out / "run"), eval_config(db, pairs, tiny_diffusion))
    return res, out / "run"


def eval_config(db, pairs, tiny_diffusion) -> EvalConfig:
    return EvalConfig(methods=["bicubic", "realesrgan", "refdsr"], ref_modes=["retrieved", "random", "none", "given"],
                      db=db, pairs_file=str(pairs), encoders=["dinov2", "efficientnet-lite0"], crop=128, shard_size=2,
                      metrics=["psnr", "ssim", "lpips", "niqe"], weights={"refdsr": tiny_diffusion["base"]},
                      generator_options={"osediff_weights": tiny_diffusion["osediff"],
                                         "refdsr_weights": tiny_diffusion["branch"]})


def test_per_image_parquet(result):
    res, out = result
    rows = manifest.read_table(str(out), catalog.MANIFEST_DIR, EVAL_SCHEMA).to_pandas()
    runs = {("bicubic", "none"), ("realesrgan", "none"), ("refdsr", "retrieved"), ("refdsr", "random"),
            ("refdsr", "none"), ("refdsr", "given"),
            ("bicubic", "transfer"), ("realesrgan", "transfer"), ("refdsr", "transfer")}  # with --db (issue 24)
    assert set(zip(rows["method"], rows["ref_mode"])) == runs
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == 4 * 8 + 1  # 'given' exists for chelsea only
    assert set(ok[ok["ref_mode"] == "transfer"]["ref_match"]) <= {"same_scene", "semantic", "none"}
    errors = rows[rows["status"] == "error"]
    assert set(errors["ref_mode"]) == {"given"} and errors["error"].str.contains("pairs CSV").all()
    assert ok["psnr"].between(10, 60).all() and ok["ssim"].between(0, 1).all()
    assert ok["lpips"].isna().all()  # unavailable here: None, never a made-up number
    assert ok["niqe"].notna().all()  # the prior is fetched by setup (python -m rasr.research.niqe_prior)
    assert (ok["width"] == 128).all() and ok["restore_ms"].gt(0).all()
    given = ok[ok["ref_mode"] == "given"].iloc[0]
    assert given["relpath"] == "animals/chelsea.png" and given["ref_uri"].endswith("coffee.png")
    ret = ok[ok["ref_mode"] == "retrieved"]
    assert ret["ref_similarity"].notna().all() and (ret["ref_uri"] != ret["source_uri"]).all()
    d = json.loads(ok.iloc[0]["degradation"])
    assert {"blur1", "resize1", "noise1", "jpeg1", "final"} <= set(d)
    for uri in ok["sr_uri"]:
        assert Image.open(uri).size == (128, 128)


def test_table1_layout_and_unavailable_metrics(result):
    res, out = result
    t1 = res["table1"]
    lines = t1.splitlines()
    assert lines[0].startswith("| Method | Images | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓ | NIQE↓")
    assert any(line.startswith("| bicubic *(baseline)*") for line in lines)
    real = next(line for line in lines if line.startswith("| realesrgan"))
    assert "(+" in real or "(-" in real  # delta against the baseline
    assert "unavailable" in real
    avail = lines[-1]
    assert "unavailable: " in avail and "alexnet-owt-7be5be79.pth" in avail  # the reason, in the table
    assert (out / "table1.md").read_text().strip() == t1.strip()
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary["method"]) == {"bicubic", "realesrgan", "refdsr"}


def test_table5_retrieval_encoders(result):
    res, out = result
    t5 = res["table5"]
    row = {line.split("|")[1].strip(): line for line in t5.splitlines()[2:]}
    assert set(row) == {"random", "vgg16", "clip", "dinov2", "efficientnet-lite0", "efficientnet-lite1"}
    assert "unavailable" in row["dinov2"] and "not requested" in row["vgg16"]
    # the gallery was indexed with the default encoder only: lite0 says how to index for it
    assert "no table gallery__efficientnet_lite0" in row["efficientnet-lite0"]
    assert "--encoder efficientnet-lite0" in row["efficientnet-lite0"]
    assert "%" in row["efficientnet-lite1"] and "%" in row["random"]
    retrieval = manifest.read_table(str(out), "retrieval", RETRIEVAL_SCHEMA)
    assert set(retrieval.column("encoder").to_pylist()) == {"efficientnet-lite1", "random"}


def test_html_report_is_self_contained(result):
    res, out = result
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 10 and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html.replace("https://download", "").replace("https://huggingface", "")
    for label in ("LR (x4 nearest)", "GT", "bicubic", "realesrgan", "refdsr (retrieved)", "reference"):
        assert label in html
    assert "metric distributions" in html
    # real tables, not Markdown in <pre>; no availability row of paths and URLs; one note says what is missing
    assert "<pre>" not in html and "*availability*" not in html and "| Method |" not in html
    tables = re.findall(r'<table class="t">.*?</table>', html, re.S)
    assert len(tables) == 2 and "PSNR↑" in tables[0] and "Top-1 category acc." in tables[1]
    assert "alexnet-owt-7be5be79.pth" not in "".join(tables) and "https://" not in "".join(tables)
    assert 'class="n best"' in tables[0] and re.search(r'class="dl (good|bad)">[+-]', tables[0])
    assert '<td class="n na">n/a</td>' in tables[0]  # LPIPS: unavailable, said in one word
    note = re.search(r'<div class="note"><b>Unavailable metrics: (.*?)</div>', html, re.S)
    assert note and "LPIPS" in note.group(1) and html.count("<code>alexnet-owt-7be5be79.pth</code>") == 1
    # the before/after viewer on the best and worst images: one per example, LR against the method
    assert html.count('class="ba px"') == html.count("<h4>") > 0 and 'type="range"' in html


def test_report_renders_in_headless_chromium(result, tmp_path):
    res, out = result
    chromium = browser.chromium()
    shot = tmp_path / "report.png"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'u'}",
            "--window-size=1400,3000", f"--screenshot={shot}", (out / "report.html").as_uri()]
    subprocess.run(args, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (3000, 1400)
    assert img.std() > 20  # not a blank page: tables, crops and plots were drawn
    run = subprocess.run([*args[:-2], "--dump-dom", "--enable-logging=stderr", "--v=0", (out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    dom = run.stdout
    assert dom.count("<img") == (out / "report.html").read_text().count("<img")
    assert '<pre id="page-errors" hidden=""></pre>' in dom  # no script error, no image that failed to load
    assert [line for line in run.stderr.splitlines() if ":CONSOLE" in line] == []


def test_html_tables_mark_the_best_colour_deltas_and_note_missing_files():
    from rasr.results import evaluation_report

    summary = pd.DataFrame([
        {"method": "bicubic", "ref_mode": "none", "images": 4, "psnr": 25.4, "ssim": 0.62, "lpips": None, "niqe": 11.1},
        {"method": "realesrgan", "ref_mode": "none", "images": 4, "psnr": 25.45, "ssim": 0.64, "lpips": None, "niqe": 7.0},
        {"method": "refdsr", "ref_mode": "retrieved", "images": 4, "psnr": 24.9, "ssim": 0.60, "lpips": None,
         "niqe": 12.0}])
    missing = "/hub/checkpoints/alexnet-owt-7be5be79.pth is missing (copy it from https://download.pytorch.org/a.pth)"
    status = {"psnr": "ok", "ssim": "ok", "lpips": f"unavailable: {missing} - folders follow $TORCH_HOME/hub",
              "niqe": "ok", "fid": f"unavailable: {missing.replace('alexnet', 'inception')}"}
    t = evaluation_report.table1_html(summary, status, "bicubic")
    rows = re.findall(r"<tr.*?</tr>", t, re.S)
    cells = [re.findall(r"<t[dh]( class=\"[^\"]*\")?>(.*?)</t[dh]>", r) for r in rows]
    assert [c[1] for c in cells[0]] == ["Method", "Images", "PSNR↑", "SSIM↑", "LPIPS↓", "FID↓", "NIQE↓"]
    assert all(cls.startswith(' class="n') for c in cells[1:] for cls, _ in c[1:])  # numbers right-aligned
    real, ref = dict(zip(["m", "i", "psnr", "ssim", "lpips", "fid", "niqe"], cells[2])), cells[3]
    assert real["psnr"] == (' class="n best"', '25.45<span class="dl good">+0.05</span>')
    assert real["niqe"] == (' class="n best"', '7.0000<span class="dl good">-4.1000</span>')  # lower is better
    assert ref[2] == (' class="n"', '24.90<span class="dl bad">-0.50</span>')
    assert real["lpips"] == (' class="n na"', "n/a") and "(baseline)" in rows[1] and 'class="base"' in rows[1]
    note = evaluation_report.unavailable_note(status)
    assert note.count("<li>") == 2 and "Unavailable metrics: LPIPS, FID." in note
    assert "<code>alexnet-owt-7be5be79.pth</code> &rarr; <code>/hub/checkpoints/</code>" in note
    assert evaluation_report.unavailable_note({"psnr": "ok"}) == ""


def test_rerun_does_no_work(result, flows_env, hr_set, db, tiny_diffusion):
    res, out = result
    pairs = out.parent / "pairs.csv"
    again = evaluate(str(hr_set), str(out), eval_config(db, pairs, tiny_diffusion))
    assert again["evaluated"] == 0 and again["already_done"] == 4
    assert again["table1"] == res["table1"]


def test_rerun_with_the_db_spelled_differently_does_no_work(result, flows_env, hr_set, db, tiny_diffusion, tmp_path):
    """--db through a symlink, relative to the working directory, with a trailing slash: the file system says it
    is the same DB, so the config hash is the same and nothing is evaluated again (issue 26)."""
    _, out = result
    link = tmp_path / "same-refs.lance"
    link.symlink_to(db)
    spelled = os.path.relpath(link) + "/"
    assert os.path.samefile(spelled, db) and spelled.rstrip("/") != db
    cfg = dataclasses.replace(eval_config(db, out.parent / "pairs.csv", tiny_diffusion), db=spelled)
    again = evaluate(str(hr_set), str(out), cfg)
    assert again["evaluated"] == 0 and again["already_done"] == 4


def test_realesrgan_vs_bicubic_matches_common_knowledge(flows_env, niqe_prior, tmp_path):
    """On clean x4 bicubic LR inputs (given with --lr-dir): Real-ESRGAN has lower PSNR and better NIQE."""
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    for n in ("chelsea", "coffee", "astronaut", "rocket"):
        img = prepare_hr(as_rgb(load_photo(n)), 192)
        for folder, pic in ((hr, img), (lr, np.asarray(Image.fromarray(img).resize((48, 48), Image.BICUBIC)))):
            (folder / "photos").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pic).save(folder / "photos" / f"{n}.png")
    res = evaluate(str(hr), str(tmp_path / "out"), EvalConfig(methods=["bicubic", "realesrgan"], ref_modes=["none"],
                                                              lr_dir=str(lr), metrics=["psnr", "ssim", "niqe"],
                                                              shard_size=4))
    summary = {r["method"]: r for r in res["summary"]}
    assert summary["realesrgan"]["psnr"] < summary["bicubic"]["psnr"]
    assert summary["realesrgan"]["niqe"] < summary["bicubic"]["niqe"]
    rows = manifest.read_table(str(tmp_path / "out"), catalog.MANIFEST_DIR, EVAL_SCHEMA).to_pandas()
    assert rows["degradation"].str.contains("lr_file").all()  # the given LR files were used, not degraded


def test_prepare_hr_crops_to_the_scale():
    img = np.zeros((301, 203, 3), np.uint8)
    assert prepare_hr(img, 0).shape == (300, 200, 3)
    assert prepare_hr(img, 128).shape == (128, 128, 3)


def test_metrics_cli_json(tmp_path, prefect_harness, niqe_prior):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for n in ("chelsea", "coffee"):
        hr = as_rgb(load_photo(n))[:128, :128]
        Image.fromarray(hr).save(gt / f"{n}.png")
        blurry = Image.fromarray(hr).resize((32, 32), Image.BICUBIC).resize((128, 128), Image.BICUBIC)
        blurry.save(pred / f"{n}.jpg", quality=95)  # another tool's output: other extension, same name
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "metrics", str(pred), str(gt), "--json",
                        "--out", str(tmp_path / "m")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    means = json.loads(r.stdout)
    assert set(means) == {"psnr", "ssim", "lpips", "dists", "niqe", "musiq", "clipiqa", "fid"}
    assert 15 < means["psnr"] < 40 and 0 < means["ssim"] < 1 and means["niqe"] > 0
    assert means["lpips"] is None and means["fid"] is None
    assert (tmp_path / "m" / "metrics.parquet").exists() and (tmp_path / "m" / "metrics.md").exists()
    res = score_folder(str(pred), str(gt), config=ScoreConfig(metrics=["psnr"]))
    assert res["pairs"] == 2 and res["means"]["psnr"] == pytest.approx(means["psnr"], abs=1e-6)
