"""The results page of an enhance output (`rasr report`, and the end of every enhance run): what it shows,
thumbnails made once, the nightly run's photos first, S3 with no credential in it, 10,000 rows with a
small first payload, and headless Chromium (no errors, the slider moves, filters hide the right rows,
the screenshot shows the photos)."""

import datetime as dt
import hashlib
import html
import json
import os
import re
import subprocess
import sys
from collections import Counter
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from flows.enhance import enhance_archive
from flows.nightly import nightly_enhance
from rasr import manifest
from rasr.results import results_page, results_page_state
from rasr.manifest import read_manifest
from rasr.samples import as_rgb, load_photo
from tests.browser import browse
from tests.flows.test_cli import NO_ENGINES, summary_of
from rasr.restoration.enhance_run import EnhanceConfig

RASR = [sys.executable, "-m", "flows.cli"]
ODD_NAME = "food/coffee & l'été <b>.png"  # quotes, markup and accents: escaped in HTML and in JS strings


def save_photo(path, name, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(as_rgb(load_photo(name))).resize(size, Image.BICUBIC).save(path)


@pytest.fixture(scope="module")
def run(db, tmp_path_factory):
    """A real bicubic run: four small photos (one with an awkward name), two broken files, one skipped."""
    root = tmp_path_factory.mktemp("run")
    src, out = root / "in", root / "out"
    save_photo(str(src / "animals" / "chelsea.png"), "chelsea", (48, 32))
    save_photo(str(src / ODD_NAME), "coffee", (40, 30))
    save_photo(str(src / "machines" / "rocket.png"), "rocket", (30, 40))
    save_photo(str(src / "people" / "astronaut.png"), "astronaut", (36, 36))
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.jpg").write_text("this is not a photo\n")
    (src / "readme.txt").write_text("archive notes\n")
    summary = enhance_archive(str(src), str(out), EnhanceConfig(db=db, generator="bicubic", top_k=2, shard_size=4))
    return src, out, summary


def artifacts(key: str) -> list[dict]:
    """The newest Prefect artifacts with this key."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                                sort=ArtifactSort.CREATED_DESC, limit=20)
            return [a.model_dump(mode="json") for a in found]

    return asyncio.run(read())


def page_rows(out) -> list[str]:
    """Every row's HTML, in page order, from the data files."""
    data = out / "report" / "data"
    rows = []
    for name in sorted(f for f in os.listdir(data) if f.startswith("page-")):
        text = (data / name).read_text()
        rows += [m.group(1) for m in re.finditer(r"'((?:[^'\\]|\\.)*)'", text)]
    return [r.replace("\\'", "'").replace("<\\/", "</").replace("\\\\", "\\") for r in rows]


def row_of(rows: list[str], relpath: str) -> str:
    hits = [r for r in rows if f'data-p="{html.escape(relpath)}"' in r]
    assert len(hits) == 1, relpath
    return hits[0]


def test_every_enhance_run_writes_the_page_and_links_it_in_prefect(run):
    src, out, summary = run
    index = out / "report" / "index.html"
    assert summary["report"] == str(index) and index.is_file()
    details = artifacts("enhance-summary-details")
    assert any(f"Results page:** [{index}]({index.as_uri()})" in a["data"] for a in details)
    tables = [a["data"] if isinstance(a["data"], list) else json.loads(a["data"]) for a in artifacts("enhance-summary")]
    assert any({"field": "report", "value": str(index)} in t for t in tables)


def test_page_shows_the_summary_the_failures_and_each_image(run):
    src, out, summary = run
    rows = read_manifest(str(out)).to_pylist()
    page = (out / "report" / "index.html").read_text()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4 and summary["failed"] == 2 and summary["skipped"] == 1
    assert "7: 4 ok, 2 failed, 1 skipped" in page and summary["run_id"] in page and "bicubic (4)" in page
    for r in rows:
        if r["status"] != "ok":  # each failure with its reason, in the summary and in its row
            assert html.escape(r["error"]) in page
    data = page_rows(out)
    assert len(data) == len(rows)
    assert [re.search(r'data-p="([^"]*)"', d).group(1) for d in data] == [
        html.escape(p) for p in sorted(r["relpath"] for r in rows)]  # one run: ordered by path
    for r in rows:
        row = row_of(data, r["relpath"])
        if r["status"] != "ok":
            assert html.escape(r["error"]) in row and "nothing to show" in row
            continue
        assert '<span class="badge new">new</span>' in row  # all rows are this run's
        sprite = results_page.sprite_path(r)
        assert row.count(f'src="{sprite}"') == 4 and 'loading="lazy"' in row  # two viewers, one file
        assert ("ref_used</td><td>yes" if r["ref_used"] else "ref_used</td><td>no") in row
        assert len(r["ref_ids"]) == 2
        for rid, sim, cat in zip(r["ref_ids"], r["ref_similarities"], r["ref_categories"]):
            assert f'src="thumbs/ref/{rid[:2]}/{rid}.' in row and f"{sim:.3f} &middot; {cat}" in row
            assert (out / "report" / results_page.ref_path(rid)).is_file()
        assert f"{r['timings_ms']['total']:,.0f} ms" in row or f"{r['timings_ms']['total']:.1f} ms" in row
        assert f'href="../images/{quote(os.path.relpath(r["output_uri"], out / "images"))}"' in row
        # the sprite: [input | output | input crop | output crop], the thumbnails match the real files
        tw, th, cw, ch = results_page.layout(r["out_width"], r["out_height"])
        sheet = Image.open(out / "report" / sprite).convert("RGB")
        assert sheet.size == (2 * tw + 2 * cw, max(th, ch))
        small = (tw // 4, th // 4)  # compared coarsely: independent of the resampling filter and WebP
        for part, uri in ((0, r["source_uri"]), (1, r["output_uri"])):
            got = np.asarray(sheet.crop((part * tw, 0, (part + 1) * tw, th)).resize(small, Image.BOX), np.float32)
            want = np.asarray(Image.open(uri).convert("RGB").resize(small, Image.BOX), np.float32)
            assert np.abs(got - want).mean() < 6, (r["relpath"], part)
        # and finely: the original is the blocky input, the enhanced one the smooth output (not swapped)
        blocky = np.asarray(Image.open(r["source_uri"]).convert("RGB").resize((tw, th), Image.NEAREST), np.float32)
        smooth = np.asarray(Image.open(r["output_uri"]).convert("RGB").resize((tw, th), Image.BICUBIC), np.float32)
        for part, own, other in ((0, blocky, smooth), (1, smooth, blocky)):
            got = np.asarray(sheet.crop((part * tw, 0, (part + 1) * tw, th)), np.float32)
            assert np.abs(got - own).mean() < 0.75 * np.abs(got - other).mean(), (r["relpath"], part)
    assert html.escape(ODD_NAME) in "".join(data) and "<b>.png" not in "".join(data)


def test_thumbnails_are_made_once(run):
    src, out, _ = run
    thumbs = out / "report" / "thumbs"
    before = {p: p.stat().st_mtime_ns for p in thumbs.rglob("*") if p.is_file()}
    again = results_page.write_report(str(out))
    assert again["thumbs_made"] == 0 and again["refs_made"] == 0 and again["thumbs_reused"] == 4
    assert {p: p.stat().st_mtime_ns for p in thumbs.rglob("*") if p.is_file()} == before


def test_report_command(run, tmp_path):
    src, out, _ = run
    r = subprocess.run([*RASR, "report", str(out)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **NO_ENGINES})  # no Prefect, no Ray
    assert r.returncode == 0, r.stderr[-2000:]
    s = summary_of(r.stdout)
    assert s["report"] == str(out / "report" / "index.html") and s["rows"] == "7" and s["thumbs_made"] == "0"
    r = subprocess.run([*RASR, "report", str(src)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **NO_ENGINES})
    assert r.returncode == 2 and "has no manifest" in r.stderr


def test_a_report_failure_does_not_fail_the_run(db, tmp_path, monkeypatch, caplog):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(results_page, "append_run", broken)
    save_photo(str(tmp_path / "in" / "a" / "rocket.png"), "rocket", (20, 24))
    s = enhance_archive(str(tmp_path / "in"), str(tmp_path / "out"), EnhanceConfig(generator="bicubic"))
    assert s["ok"] == 1 and "report" not in s
    assert "results page not written: OSError: disk full" in caplog.text


# ---- headless Chromium ---------------------------------------------------------------------------

def selftest(index, tmp_path, sim: float | None = None) -> dict:
    """The page's own test hook (#selftest): what it saw, as JSON in <pre id=selftest>; no console output."""
    r = browse(index.as_uri() + "#selftest" + (f"&sim={sim}" if sim is not None else ""), tmp_path, "--dump-dom")
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no uncaught error, no console message at all
    m = re.search(r'<pre id="selftest">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stdout[-3000:]
    res = json.loads(html.unescape(m.group(1)))
    assert res["errors"] == ""  # window.onerror, failed image/script loads, rejected promises
    return res


def test_page_in_headless_chromium(run, tmp_path):
    src, out, _ = run
    rows = read_manifest(str(out)).to_pylist()
    sims = {r["relpath"]: round(r["ref_similarities"][0], 4) for r in rows if r["ref_similarities"]}
    cut = sorted(sims.values())[len(sims) // 2]  # about half the images are at or above it
    index = out / "report" / "index.html"
    res = selftest(index, tmp_path, sim=cut)

    assert {x["path"] for x in res["initial"]} == {r["relpath"] for r in rows}
    assert all(x["visible"] for x in res["initial"])
    assert res["images"] > 0 and res["images_loaded"] == res["images"]  # sprites and reference thumbnails
    # the slider moves the split
    v = res["first_viewer"]
    assert res["slider"]["before"] == "50%" and res["slider"]["after"] == "20%"
    assert res["slider"]["split_before"] == pytest.approx(v["w"] / 2, abs=2)
    assert res["slider"]["split_after"] == pytest.approx(v["w"] / 5, abs=2)
    # status filter: exactly the failed rows remain
    failed = {r["relpath"] for r in rows if r["status"] == "error"}
    assert {x["path"] for x in res["status_error"]} == failed and len(res["status_error"]) == len(failed) == 2
    # similarity filter, sorted by similarity: exactly the rows at or above the cut, best first
    shown = res["similarity"]
    assert {x["path"] for x in shown} == {p for p, s in sims.items() if s >= cut}
    assert [float(x["sim"]) for x in shown] == sorted((s for s in sims.values() if s >= cut), reverse=True)

    # the screenshot shows the first row's photos: original left of the split, enhanced right of it
    shot = tmp_path / "page.png"
    browse(index.as_uri(), tmp_path, f"--screenshot={shot}")
    img = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    x, y, w, h = (round(v[k]) for k in ("x", "y", "w", "h"))
    assert img.shape[:2] == (2400, 1400) and y + h <= 2400
    seen = img[y:y + h, x:x + w]
    assert seen.std() > 20  # a photo, not a blank box
    sheet = np.asarray(Image.open(index.parent / v["src"]).convert("RGB"), np.float32)
    expected = np.concatenate([sheet[:h, :w // 2], sheet[:h, w + w // 2:2 * w]], axis=1)  # original | enhanced
    keep = np.ones((h, w), bool)
    keep[:20] = False  # the labels
    keep[:, w // 2 - 4:w // 2 + 4] = False  # the split line
    assert np.abs(seen - expected)[keep].mean() < 10
    blank = np.abs(seen - seen.mean(axis=(0, 1)))[keep].mean()
    assert blank > 3 * np.abs(seen - expected)[keep].mean()


def page_meta(out) -> dict:
    text = (out / "report" / "index.html").read_text()
    return json.loads(re.search(r"var RASR_META=(\{.*?\});</script>", text).group(1))


def test_nightly_run_appends_that_nights_photos_and_shows_them_first(run, db, tmp_path):
    """A night adds a photo and changes one: it appends a page of its two rows and rewrites no earlier page; the
    browser shows them first, marked new, the changed photo's earlier row nowhere; the summary counts each input
    once, as a summary computed from the manifest does."""
    src, out, _ = run
    data = out / "report" / "data"
    before = {f: (data / f).read_bytes() for f in os.listdir(data) if f.startswith("page-")}
    save_photo(str(src / "places" / "china.png"), "china", (44, 30))
    save_photo(str(src / "machines" / "rocket.png"), "rocket", (32, 40))  # changed: enhanced again
    s = nightly_enhance(str(src), str(out), EnhanceConfig(db=db, generator="bicubic", top_k=2, shard_size=4))
    assert s["processed"] == 2 and s["report"] == str(out / "report" / "index.html")
    assert {f: (data / f).read_bytes() for f in before} == before  # earlier pages untouched
    added = sorted(set(os.listdir(data)) - set(before))
    assert [f for f in added if f.startswith("page-")] == [f"page-{len(before):05d}.js"]
    night = [re.search(r'data-p="([^"]*)"', r).group(1) for r in page_rows(out)[-2:]]
    assert night == ["machines/rocket.png", "places/china.png"]
    meta = page_meta(out)
    assert meta["runs"][meta["first"]] == [7, 2, len(before)] and meta["total"] == 8 and meta["rows"] == 9

    latest = read_manifest(str(out)).to_pylist()  # the newest row per input, independently of the page
    status = Counter(r["status"] for r in latest)
    page = (out / "report" / "index.html").read_text()
    assert f"{len(latest)}: {status['ok']} ok, {status['error']} failed, {status['skipped']} skipped" in page
    assert f"{sum(r['ref_used'] for r in latest if r['status'] == 'ok')} of {status['ok']}" in page
    assert s["run_id"] in page

    res = selftest(out / "report" / "index.html", tmp_path)
    shown = [(x["path"], x["new"]) for x in res["initial"]]
    assert shown[:2] == [("machines/rocket.png", True), ("places/china.png", True)]
    assert [p for p, _ in shown] == ["machines/rocket.png", "places/china.png", *sorted(
        r["relpath"] for r in latest if r["run_id"] != s["run_id"])]  # the earlier run's rows, rocket's gone
    assert not any(new for _, new in shown[2:])


# ---- S3 -------------------------------------------------------------------------------------------

def test_report_on_s3_copies_thumbnails_and_holds_no_credentials(flows_env, s3_server, tmp_path):
    import boto3

    from tests.conftest import S3_KEY_ID, S3_SECRET

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="pages")
    for i, name in enumerate(("chelsea", "coffee", "rocket")):
        save_photo(str(tmp_path / "src" / f"{name}.png"), name, (32 + 4 * i, 24))
        s3.upload_file(str(tmp_path / "src" / f"{name}.png"), "pages", f"in/c/{name}.png")
    s3.put_object(Bucket="pages", Key="in/c/broken.jpg", Body=b"not a photo")
    s = enhance_archive("s3://pages/in", "s3://pages/out", EnhanceConfig(generator="bicubic", shard_size=2))
    assert s["ok"] == 3 and s["report"] == "s3://pages/out/report/index.html"
    # a second night on S3 appends (its row index read by ranged GETs): a new photo and a changed one
    for name, size in (("astronaut", (30, 30)), ("rocket", (44, 24))):
        save_photo(str(tmp_path / "src" / f"{name}.png"), name, size)
        s3.upload_file(str(tmp_path / "src" / f"{name}.png"), "pages", f"in/c/{name}.png")
    s2 = enhance_archive("s3://pages/in", "s3://pages/out", EnhanceConfig(generator="bicubic", shard_size=2))
    assert s2["ok"] == 2 and s2["report"] == s["report"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="pages", Prefix="out/report/")["Contents"]]
    assert sum(k.startswith("out/report/thumbs/") for k in keys) == 5  # the old rocket's sprite stays
    local = tmp_path / "copy"
    for key in keys:
        body = s3.get_object(Bucket="pages", Key=key)["Body"].read()
        for secret in (S3_KEY_ID, S3_SECRET, "X-Amz-", "AWSAccessKeyId", "Signature=", s3_server.split("//")[1]):
            assert secret.encode() not in body, (key, secret)
        assert not re.search(rb"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}", body), key
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(body)
    links = re.findall(r'(?:src|href)="([^"]*)"', "".join(page_rows(local / "out")))
    assert links and all(k.startswith(("thumbs/", "../images/")) for k in links)  # relative: no store address
    res = selftest(local / "out" / "report" / "index.html", tmp_path)  # the copy works offline, on its own
    assert [(x["path"], x["new"]) for x in res["initial"]] == [
        ("c/astronaut.png", True), ("c/rocket.png", True), ("c/broken.jpg", False), ("c/chelsea.png", False),
        ("c/coffee.png", False)]  # the second night first; the changed photo once, in its newest row
    assert res["images_loaded"] == res["images"] > 0
    for obj in s3.list_objects_v2(Bucket="pages")["Contents"]:
        s3.delete_object(Bucket="pages", Key=obj["Key"])
    s3.delete_bucket(Bucket="pages")


# ---- scale ----------------------------------------------------------------------------------------

def fake_output(root, n: int) -> str:
    """An OUTPUT with n manifest rows (every 10th failed, every 50th skipped) over four real photo pairs,
    each row its own file (hard links: cheap) so the newest-row-per-input view keeps all n."""
    src, out = root / "in", root / "out"
    pairs = []
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        save_photo(str(src / "base" / f"{name}.png"), name, (40, 30))
        save_photo(str(out / "base" / f"{name}.png"), name, (160, 120))
        pairs.append((src / "base" / f"{name}.png", out / "base" / f"{name}.png",
                      hashlib.sha256((src / "base" / f"{name}.png").read_bytes()).hexdigest()))
    rows, t0 = [], dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    for i in range(n):
        p0, o0, sha = pairs[i % 4]
        p, o = src / f"d{i // 500}" / f"{i:05d}.png", out / "images" / f"d{i // 500}" / f"{i:05d}.png.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        o.parent.mkdir(parents=True, exist_ok=True)
        os.link(p0, p)
        os.link(o0, o)
        st = "error" if i % 10 == 3 else "skipped" if i % 50 == 7 else "ok"
        r = manifest.empty_row()
        r.update(source_uri=str(p), relpath=f"d{i // 500}/{i:05d}.png", sha256=sha, status=st, generator="bicubic",
                 error={"error": "truncated file", "skipped": "hidden"}.get(st), config_hash="c0ffee", run_id="r1",
                 shard_id=f"s{i % 4}", processed_at=t0 + dt.timedelta(seconds=i))
        if st == "ok":
            ref = pairs[(i + 1) % 4]
            r.update(output_uri=str(o), width=40, height=30, out_width=160, out_height=120, ref_ids=[ref[2]],
                     ref_uris=[str(ref[0])], ref_similarities=[0.3 + (i % 7) / 10], ref_categories=["animals"],
                     ref_used=True, timings_ms={k: float(i % 13 + 1) for k in manifest.TIMING_FIELDS})
        rows.append(r)
    for sid in ("s0", "s1", "s2", "s3"):
        manifest.write_rows(manifest.shard_table_uri(str(out), "manifest", sid), [r for r in rows if r["shard_id"] == sid])
    return str(out)


def initial_payload(index) -> int:
    """Bytes a browser reads to show the page: index.html and the scripts it names (the first data page)."""
    text = index.read_text()
    scripts = re.findall(r'<script src="([^"]+)"', text)
    assert scripts == ["data/page-00000.js"]  # everything else is loaded when shown or filtered (one run)
    return len(text.encode()) + sum((index.parent / s).stat().st_size for s in scripts)


def test_ten_thousand_rows_are_paged_and_the_first_payload_stays_small(tmp_path):
    big = fake_output(tmp_path / "big", 10_000)
    res = results_page.write_report(big)
    assert res["rows"] == 10_000 and res["pages"] == 10_000 // results_page.PAGE_SIZE
    assert res["thumbs_made"] == 4 and res["refs_made"] == 4  # one sprite per distinct input and config
    index = tmp_path / "big" / "out" / "report" / "index.html"
    payload = initial_payload(index)
    small = results_page.write_report(fake_output(tmp_path / "small", 120))
    small_payload = initial_payload(tmp_path / "small" / "out" / "report" / "index.html")
    assert payload < 250_000 and abs(payload - small_payload) < 2_000  # independent of the number of rows
    assert small["pages"] == 3
    keys = (index.parent / "data" / "keys-00000.js").read_text()
    assert keys.startswith("RASR.keys(0,") and len(json.loads(keys[len("RASR.keys(0,"):-3])["path"]) == 10_000
    paths = [re.search(r'data-p="([^"]*)"', r).group(1) for r in page_rows(tmp_path / "big" / "out")]
    assert len(paths) == len(set(paths)) == 10_000


# ---- incremental ----------------------------------------------------------------------------------

def _night(out: str, run_id: str, relpaths: list[str], status: str, at: dt.datetime) -> list[dict]:
    """Manifest rows of a night (failed or skipped: no thumbnails to make), written as its shard file."""
    rows = []
    for i, p in enumerate(relpaths):
        r = manifest.empty_row()
        r.update(source_uri=os.path.normpath(os.path.join(out, "..", "in", p)), relpath=p, sha256=f"{i:064x}", status=status,
                 error=f"reason {i % 2}", generator="bicubic", config_hash="c0ffee", run_id=run_id, shard_id=run_id,
                 processed_at=at + dt.timedelta(seconds=i))
        rows.append(r)
    manifest.write_rows(manifest.shard_table_uri(out, "manifest", run_id), rows)
    return rows


def _cards(out) -> str:
    """The summary's "All images" card and the failure tables of index.html."""
    text = (out / "report" / "index.html").read_text()
    return re.search(r"<h3>All images</h3>.*?</table>", text, re.S).group(0) + text[text.index("<h2>Failures"):
                                                                                  text.index('<h2 id="images">')]


def test_nights_append_and_agree_with_a_page_written_anew(tmp_path):
    """Twelve nights appended to a 300-row page: earlier data files are never rewritten (the partial key chunk
    aside), inputs enhanced again are counted once, the summary equals the one written anew from the manifest and
    the one computed here from the manifest, and the row index stays at most MAX_FILES files."""
    out = fake_output(tmp_path / "a", 300)
    results_page.write_report(out)
    data = tmp_path / "a" / "out" / "report" / "data"
    at = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    for night in range(12):
        before = {f: (data / f).read_bytes() for f in os.listdir(data) if f.startswith("page-")}
        again = [f"d0/{night * 7 + k:05d}.png" for k in range(3)]  # inputs of the first run, failing now
        fresh = [f"n{night}/{k}.png" for k in range(4)]
        rows = _night(out, f"night{night}", again + fresh, "error" if night % 3 else "skipped",
                      at + dt.timedelta(days=night))
        res = results_page.append_run(out, f"night{night}", rows)
        assert {f: (data / f).read_bytes() for f in before} == before
        state = json.loads((data / "state.json").read_text())
        assert len(state["index"]) <= results_page_state.rowsets.MAX_FILES
    latest = read_manifest(out).to_pylist()
    assert res["rows"] == len(latest) == 300 + 12 * 4 and state["superseded"] == 12 * 3
    status = Counter(r["status"] for r in latest)
    sims = [r["ref_similarities"][0] for r in latest if r["status"] == "ok"]
    appended = _cards(tmp_path / "a" / "out")
    assert f"{len(latest)}: {status['ok']} ok, {status['error']} failed, {status['skipped']} skipped" in appended
    assert f"median {np.median(sims):.3f}, min {min(sims):.3f}, max {max(sims):.3f}" in appended
    reasons = Counter(r["error"] for r in latest if r["status"] == "error")
    for reason, n in reasons.items():
        assert f"<td>{reason}</td><td class=\"n\">{n}</td>" in appended
    results_page.write_report(out)  # the page anew, from the manifest: the same counts (examples may differ)
    counts = lambda text: re.sub(r" \(36 earlier rows of inputs enhanced again are hidden\)|(</td><td class=\"n\">\d+</td>)"
                                 r"<td>[^<]*</td>|<td>processed</td><td>[^<]*</td>", r"\1", text)  # from: the earliest ever
    assert counts(_cards(tmp_path / "a" / "out")) == counts(appended)
    keys = json.loads(re.sub(r"^RASR\.keys\(0,|\);\n$", "", (data / "keys-00000.js").read_text()))
    state = json.loads((data / "state.json").read_text())
    assert state["pages"] == 6 + 12  # 264 rows of the first run, 7 of each night
    assert len(keys["path"]) == 348 and sorted(os.listdir(data)) == sorted(  # nothing of the appended page left
        [f"page-{p:05d}.js" for p in range(18)] + ["keys-00000.js", "state.json"] + [n for n, _ in state["index"]])


def test_merge_choice_is_size_tiered():
    from rasr.rowsets import merge_choice

    assert merge_choice([5] * 8) == []
    assert sorted(merge_choice([1000, 1, 1, 1, 1, 1, 1, 1, 1])) == list(range(1, 9))  # the small ones, not the big
    assert sorted(merge_choice([1000, 8, 1, 1, 1, 1, 1, 1, 1])) == list(range(2, 9))
    assert sorted(merge_choice([1000, 8, 7, 1, 1, 1, 1, 1, 1])) == list(range(3, 9))


def test_a_night_killed_before_its_state_leaves_the_page_whole(tmp_path, monkeypatch):
    """A night dies after writing its pages, key chunk and index file but before state.json (the commit): the page
    still shows the earlier nights; the next night takes the same row numbers and the summary counts each input
    once, as the manifest does."""
    out = fake_output(tmp_path / "a", 120)
    results_page.write_report(out)
    at = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    state_before = (tmp_path / "a" / "out" / "report" / "data" / "state.json").read_bytes()
    real = results_page.storage.write_bytes

    def dying(uri, *a, **k):
        if uri.endswith("state.json"):
            raise KeyboardInterrupt("killed")
        return real(uri, *a, **k)

    monkeypatch.setattr(results_page.storage, "write_bytes", dying)
    rows = _night(out, "lost", ["d0/00001.png", "n/a.png", "n/b.png"], "error", at)
    with pytest.raises(KeyboardInterrupt):
        results_page.append_run(out, "lost", rows)
    monkeypatch.undo()
    assert (tmp_path / "a" / "out" / "report" / "data" / "state.json").read_bytes() == state_before
    rows = _night(out, "lost", ["d0/00001.png", "n/a.png", "n/b.png"], "error", at)  # the rerun of that night
    res = results_page.append_run(out, "next", rows)
    latest = read_manifest(out).to_pylist()
    status = Counter(r["status"] for r in latest)
    assert res["rows"] == len(latest) == 122
    assert f"{len(latest)}: {status['ok']} ok, {status['error']} failed" in _cards(tmp_path / "a" / "out")
    meta = page_meta(tmp_path / "a" / "out")
    assert meta["runs"][-1][:2] == [120, 3] and meta["rows"] == 123 and meta["total"] == 122
