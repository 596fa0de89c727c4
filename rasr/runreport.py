"""The results page of an enhance output: what the runs did, to look at rather than read.

`write_report(OUTPUT)` reads the manifest and the run summaries under OUTPUT (a folder or an s3://
prefix) and writes OUTPUT/report/, a page that opens from the folder in a browser, with no server:

  report/index.html                 run summary, failures by reason, filters, the page's script
  report/data/page-00000.js         50 rows each, as HTML; loaded when shown
  report/data/keys.js               status, category, similarity, time, path of every row: what filters
                                    and sorts need, loaded on their first use
  report/thumbs/ab/<key>.webp       per enhanced image one sprite [input | output | input crop | output crop],
                                    named by a hash of the input bytes and the config: made once, reused
  report/thumbs/ref/ab/<id>.webp    per reference photo, named by its sha256

The page links only what is inside report/ (relative links), the full-size outputs under ../images/ and
local inputs (file://): on S3 it is an object like any other, with no presigned URL and no credential.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import pathlib
import posixpath
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
from PIL import Image, features

from rasr import catalog, images, manifest, pages, runlog, storage
from rasr.pages import esc
from rasr.runreport_page import APP_JS, PAGE_CSS, TEMPLATE

REPORT_DIR = "report"
PAGE_SIZE = 50           # rows per data file, and rows shown per "show more"
THUMB = 240              # longest side of the input/output thumbnails, display pixels
CROP = 160               # side of the crop, in output pixels (shown 1:1: the zoom)
REF_THUMB = 128
BIG_PIXELS = 16_000_000  # outputs above this are decoded one at a time
LAYOUT = "sprite-v1"     # part of every sprite's name: a new layout makes new files
EXT, MIME = ("webp", "WEBP") if features.check("webp") else ("jpg", "JPEG")


def layout(out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """(thumb w, thumb h, crop w, crop h) of an output of out_w x out_h: the sprite's geometry."""
    s = THUMB / max(out_w, out_h)
    return max(1, round(out_w * s)), max(1, round(out_h * s)), min(CROP, out_w), min(CROP, out_h)


def _resize(im: Image.Image, size: tuple[int, int], box=None) -> Image.Image:
    """Nearest neighbour when enlarging (pixels stay visible), Lanczos when reducing."""
    src_w = (box[2] - box[0]) if box else im.width
    return im.resize(size, Image.NEAREST if size[0] >= src_w else Image.LANCZOS, box=box)


def _detail_crop(out: Image.Image, cw: int, ch: int) -> tuple[int, int]:
    """Top-left corner of the most detailed of 3x3 candidate crops (edges are where SR shows)."""
    f = max(1, max(out.size) // 256)
    g = np.asarray(out.convert("L").reduce(f), np.float32)
    energy = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1]
    best, corner = -1.0, ((out.width - cw) // 2, (out.height - ch) // 2)
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            x = min(max(0, round(fx * out.width - cw / 2)), out.width - cw)
            y = min(max(0, round(fy * out.height - ch / 2)), out.height - ch)
            e = float(energy[y // f:(y + ch) // f, x // f:(x + cw) // f].mean()) if energy.size else 0.0
            if e > best + 1e-6:
                best, corner = e, (x, y)
    return corner


def sprite(input_bytes: bytes, output_bytes: bytes) -> bytes:
    """[input thumb | output thumb | input crop (x-scale nearest) | output crop 1:1], one image."""
    src = Image.fromarray(images.decode_image(input_bytes, max_pixels=1 << 40).rgb)  # EXIF-oriented, RGB
    out = Image.open(io.BytesIO(output_bytes))
    out = out.convert("RGB")
    tw, th, cw, ch = layout(*out.size)
    x, y = _detail_crop(out, cw, ch)
    sx, sy = src.width / out.width, src.height / out.height
    sheet = Image.new("RGB", (2 * tw + 2 * cw, max(th, ch)), (233, 236, 241))
    sheet.paste(_resize(src, (tw, th)), (0, 0))
    sheet.paste(_resize(out, (tw, th)), (tw, 0))
    sheet.paste(src.resize((cw, ch), Image.NEAREST, box=(x * sx, y * sy, (x + cw) * sx, (y + ch) * sy)),
                (2 * tw, 0))
    sheet.paste(out.crop((x, y, x + cw, y + ch)), (2 * tw + cw, 0))
    buf = io.BytesIO()
    sheet.save(buf, format=MIME, quality=85)
    return buf.getvalue()


def ref_thumb(data: bytes) -> bytes:
    im = Image.fromarray(images.decode_image(data, max_pixels=1 << 40).rgb)
    im.thumbnail((REF_THUMB, REF_THUMB), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=MIME, quality=85)
    return buf.getvalue()


def sprite_path(row: dict) -> str:
    key = hashlib.sha256(f"{LAYOUT}:{row['sha256']}:{row['config_hash']}".encode()).hexdigest()[:32]
    return f"thumbs/{key[:2]}/{key}.{EXT}"


def transfer_path(row: dict) -> str:
    """Where the enhance worker puts [aligned same-scene reference | confidence mask] of a row, under report/."""
    key = hashlib.sha256(f"transfer-v1:{row['sha256']}:{row['config_hash']}".encode()).hexdigest()[:32]
    return f"thumbs/transfer/{key[:2]}/{key}.{EXT}"


def transfer_preview(aligned: np.ndarray, mask: np.ndarray) -> bytes:
    """[the reference aligned to the output | the confidence mask, white where its detail was taken], thumbnails."""
    h, w = mask.shape
    tw, th = layout(w, h)[:2]
    sheet = Image.new("RGB", (2 * tw, th), (233, 236, 241))
    sheet.paste(Image.fromarray(aligned).resize((tw, th), Image.LANCZOS), (0, 0))
    grey = Image.fromarray(np.clip(mask * 255 + 0.5, 0, 255).astype(np.uint8)).resize((tw, th), Image.BILINEAR)
    sheet.paste(grey.convert("RGB"), (tw, 0))
    buf = io.BytesIO()
    sheet.save(buf, format=MIME, quality=85)
    return buf.getvalue()


def ref_path(ref_id: str) -> str:
    return f"thumbs/ref/{ref_id[:2]}/{ref_id}.{EXT}"


def _existing(report: str) -> set[str]:
    """Paths (relative to report/) of the thumbnails already there: one listing, not one call each."""
    fs, base = storage.filesystem(storage.join(report, "thumbs"))
    if not fs.exists(base):
        return set()
    root = posixpath.dirname(base.rstrip("/"))
    return {p[len(root) + 1:].replace(os.sep, "/") for p in fs.find(base)}


def make_thumbnails(out: str, rows: list[dict], workers: int = 8) -> dict:
    """Sprites of ok rows and thumbnails of their references that report/thumbs lacks.

    Returns {"made", "reused", "failed": {relpath: reason}, "have": set of existing paths}."""
    report = storage.join(out, REPORT_DIR)
    have = _existing(report)
    tmp = catalog.temp_dir(out)
    todo, refs, failed = {}, {}, {}
    for r in rows:
        if r["status"] != "ok" or not r["output_uri"]:
            continue
        path = sprite_path(r)
        if path not in have:
            todo.setdefault(path, r)
        for rid, uri in zip(r["ref_ids"] or [], r["ref_uris"] or []):
            if ref_path(rid) not in have:
                refs.setdefault(ref_path(rid), uri)
    reused = len({sprite_path(r) for r in rows if r["status"] == "ok" and r["output_uri"]} & have)

    big = threading.Lock()  # one large output decoded at a time: 8 threads x 600 MP would not fit

    def make(job):
        path, what = job
        heavy = isinstance(what, dict) and (what["out_width"] or 0) * (what["out_height"] or 0) > BIG_PIXELS
        try:
            with big if heavy else contextlib.nullcontext():
                data = _make(what)
            storage.write_bytes(storage.join(report, *path.split("/")), data, tmp)
            return path, None
        except Exception as e:  # noqa: BLE001 - one missing picture is a gap in the page, not a failure
            return path, storage.redact(f"{e.__class__.__name__}: {e}")

    def _make(what) -> bytes:
        if isinstance(what, dict):
            return sprite(storage.read_bytes(what["source_uri"]), storage.read_bytes(what["output_uri"]))
        return ref_thumb(storage.read_bytes(what))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for path, err in pool.map(make, [*todo.items(), *refs.items()]):
            if err is None:
                have.add(path)
            elif path in todo:
                failed[todo[path]["relpath"]] = err
    return {"made": sum(p in have for p in todo), "reused": reused, "refs_made": sum(p in have for p in refs),
            "failed": failed, "have": have}


# ---- rows -----------------------------------------------------------------------------------------

def _sim(r: dict) -> float | None:
    sims = r["ref_similarities"] or []
    return round(float(sims[0]), 4) if sims else None


def _category(r: dict) -> str | None:
    cats = r["ref_categories"] or []
    return cats[0] if cats else None


def _link(out: str, uri: str | None) -> str | None:
    """A link that works from report/index.html without credentials: relative inside OUTPUT, file:// for
    other local files, none for other objects of a store."""
    if not uri:
        return None
    if storage.is_remote(out):
        base = out.rstrip("/") + "/"
        return "../" + quote(uri[len(base):]) if uri.startswith(base) else None
    path = os.path.abspath(uri)
    root = os.path.abspath(out)
    if path.startswith(root + os.sep):
        return "../" + quote(os.path.relpath(path, root).replace(os.sep, "/"))
    return pathlib.Path(path).as_uri()


def _ms(v) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def row_html(r: dict, i: int, thumbs: dict, out: str, new: bool) -> str:
    """One row of the page: viewers, references, facts."""
    sim, status = _sim(r), r["status"]
    prev = ""
    path = sprite_path(r) if status == "ok" else None
    if path and path in thumbs["have"] and r["out_width"]:
        tw, th, cw, ch = layout(r["out_width"], r["out_height"])
        width = 2 * tw + 2 * cw
        prev = (pages.viewer(path, path, tw, th, before_x=0, after_x=tw, image_width=width,
                             caption=f"{r['width']}x{r['height']} &rarr; {r['out_width']}x{r['out_height']}")
                + pages.viewer(path, path, cw, ch, before_x=2 * tw, after_x=2 * tw + cw, image_width=width,
                               labels=("original", "enhanced 1:1"), zoom=True,
                               caption=f"detail, {cw}x{ch} output pixels"))
    elif status == "ok":
        prev = f'<div class="nopv">no preview: {esc(thumbs["failed"].get(r["relpath"], "output not found"))}</div>'
    else:
        prev = f'<div class="nopv">{esc(status)}: nothing to show</div>'
    link = _link(out, r["output_uri"] if status == "ok" else r["source_uri"])
    name = f'<a href="{esc(link)}">{esc(r["relpath"])}</a>' if link else esc(r["relpath"])
    badges = f'<span class="badge {esc(status)}">{esc(status)}</span>' + ('<span class="badge new">new</span>' if new else "")
    parts = [f'<div class="p">{name}{badges}</div>']
    if r["error"]:
        parts.append(f'<div class="err">{esc(r["error"])}</div>')
    refs = list(zip(r["ref_ids"] or [], r["ref_uris"] or [], r["ref_similarities"] or [], r["ref_categories"] or []))
    if refs:
        figs = []
        for k, (rid, uri, s, cat) in enumerate(refs):
            matched = r.get("ref_matched_id") if r.get("ref_match") == "same_scene" else None
            used = bool(r["ref_used"]) and (rid == matched or (k == 0 and r["generator"] == "refdsr"))
            img = f'<img src="{esc(ref_path(rid))}" alt="reference" loading="lazy">' if ref_path(rid) in thumbs["have"] else ""
            figs.append(f'<figure class="{"used" if used else "unused"}" title="{esc(uri)}">{img}<figcaption>'
                        f'{s:.3f} &middot; {esc(cat or "-")}<br>{"used" if used else "not used"}</figcaption></figure>')
        parts.append(f'<div class="refs">{"".join(figs)}</div>')
    xfer = transfer_path(r) if r.get("ref_match") == "same_scene" and r["ref_used"] else None
    if xfer and xfer in thumbs["have"]:
        parts.append(f'<figure class="transfer"><img src="{esc(xfer)}" alt="aligned reference and confidence mask" '
                     f'loading="lazy"><figcaption>same-scene reference aligned to the output | confidence mask '
                     f'(white: its detail was taken)</figcaption></figure>')
    facts = {"ref_used": ("yes" if r["ref_used"] else "no") + (f" (similarity {sim:.3f})" if sim is not None else
                                                                " (no reference retrieved)")}
    if r.get("ref_match"):
        facts["reference match"] = r["ref_match"].replace("_", "-") + (
            f" ({r['ref_inliers']} inliers, detail on {r['ref_coverage']:.0%} of the output)"
            if r["ref_match"] == "same_scene" and r.get("ref_coverage") is not None else
            f" (best {r['ref_inliers']} inliers)" if r.get("ref_inliers") else "")
    t = r["timings_ms"] or {}
    if t.get("total"):
        steps = ", ".join(f"{k} {_ms(v)}" for k, v in t.items() if k != "total" and v)
        facts["time"] = f"{_ms(t['total'])} ms" + (f" ({steps})" if steps else "")
    facts["generator"] = " / ".join(x for x in (r["generator"], r["weights_id"], r["encoder"]) if x) or "-"
    if r.get("gallery_table"):
        facts["gallery"] = f"{r['gallery_table']} version {r['gallery_version']}"
    if r["processed_at"] is not None:
        facts["processed"] = f"{r['processed_at']:%Y-%m-%d %H:%M:%S} UTC, run {r['run_id']}"
    if r["notes"]:
        facts["notes"] = r["notes"]
    parts.append(pages.key_values(facts).replace('class="t"', 'class="kv"'))
    return (f'<div class="row" data-i="{i}" data-st="{esc(status)}" data-p="{esc(r["relpath"])}" '
            f'data-sim="{"" if sim is None else sim}"><div class="pv">{prev}</div><div class="info">{"".join(parts)}'
            f"</div></div>")


# ---- summary --------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, dt.datetime):
        return f"{v:%Y-%m-%d %H:%M:%S} UTC"
    return "-" if v is None else str(v)


def summary_html(rows: list[dict], runs: list[dict], first_run: str | None, n_runs: int = 0) -> str:
    status = Counter(r["status"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    totals = [r["timings_ms"]["total"] for r in ok if r["timings_ms"] and r["timings_ms"].get("total")]
    restores = [r["timings_ms"]["restore"] for r in ok if r["timings_ms"] and r["timings_ms"].get("restore")]
    sims = [s for r in ok if (s := _sim(r)) is not None]
    counted = lambda key: ", ".join(f"{k} ({n})" for k, n in Counter(r[key] for r in ok if r[key]).most_common())
    when = [r["processed_at"] for r in rows if r["processed_at"] is not None]
    facts = {"images": f"{len(rows)}: {status['ok']} ok, {status['error']} failed, {status['skipped']} skipped",
             "new in the latest run": sum(r["run_id"] == first_run for r in rows) if first_run else "-",
             "generator": counted("generator") or "-", "weights": counted("weights_id") or "-",
             "encoder": counted("encoder") or "-", "configs": counted("config_hash") or "-",
             "gallery": ", ".join(f"{t} v{v} ({n})" for (t, v), n in Counter(
                 (r.get("gallery_table"), r.get("gallery_version")) for r in ok if r.get("gallery_table")).most_common())
             or "-",
             "references used": f"{sum(bool(r['ref_used']) for r in ok)} of {len(ok)}",
             "similarity": (f"median {np.median(sims):.3f}, min {min(sims):.3f}, max {max(sims):.3f}" if sims else "-"),
             "time per image": (f"median {_ms(np.median(totals))} ms (restore {_ms(np.median(restores or [0]))} ms)"
                                if totals else "-"),
             "processed": f"{_fmt(min(when))} to {_fmt(max(when))}" if when else "-"}
    cards = [f"<div><h3>All images</h3>{pages.key_values(facts)}</div>"]
    if runs:
        last = runs[0]
        keys = ("run_id", "started_at", "finished_at", "seconds", "input", "generator", "inputs", "already_done",
                "processed", "ok", "failed", "skipped", "shards", "shards_failed", "workers", "config_hash")
        run_facts = {k: _fmt(last.get(k)) for k in keys if k in last}
        config = ""
        if last.get("config"):
            try:
                cfg = json.loads(last["config"])
                config = (f"<details><summary>configuration</summary>"
                          f"{pages.key_values({k: json.dumps(v) for k, v in sorted(cfg.items())})}</details>")
            except ValueError:
                config = f"<details><summary>configuration</summary><code>{esc(last['config'])}</code></details>"
        cards.append(f"<div><h3>Latest run</h3>{pages.key_values(run_facts)}{config}</div>")
        if len(runs) > 1:
            head = ["run", "finished", "processed", "ok", "failed", "seconds"]
            body = [[esc(r.get("run_id")), esc(_fmt(r.get("finished_at"))), *(esc(_fmt(r.get(k))) for k in head[2:])]
                    for r in runs[:10]]
            table = pages.table(head, body, numeric={2, 3, 4, 5})
            cards.append(f"<div><h3>Runs ({max(n_runs, len(runs))}, newest first)</h3>{table}</div>")
    return f'<h2>Summary</h2><div class="cards">{"".join(cards)}</div>'


def failures_html(rows: list[dict], limit: int = 30) -> str:
    """Failed and skipped inputs grouped by reason, most frequent first, with a few examples each."""
    parts = []
    for status, title in (("error", "Failures"), ("skipped", "Skipped")):
        groups: dict[str, list[str]] = {}
        for r in rows:
            if r["status"] == status:
                groups.setdefault(r["error"] or "(no reason recorded)", []).append(r["relpath"])
        if not groups:
            continue
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        body = [[esc(reason), str(len(paths)), esc(", ".join(paths[:3]) + (" ..." if len(paths) > 3 else ""))]
                for reason, paths in ranked[:limit]]
        more = (f'<p class="mut">{len(ranked) - limit} more reasons: filter the images by status.</p>'
                if len(ranked) > limit else "")
        n = sum(len(p) for p in groups.values())
        parts.append(f"<h2>{title} ({n})</h2>{pages.table(['reason', 'images', 'examples'], body, numeric={1})}{more}")
    return "".join(parts)


# ---- writing --------------------------------------------------------------------------------------

def _order(rows: list[dict], first_run: str | None) -> list[dict]:
    """The latest run's rows first (the new photos of a nightly run), then by path."""
    return sorted(rows, key=lambda r: (r["run_id"] != first_run, r["relpath"]))


def write_report(out: str, first_run: str | None = None, page_size: int = PAGE_SIZE, workers: int = 8) -> dict:
    """Write (or update) OUTPUT/report/ from the manifest under `out`; returns what was done.

    first_run: the run whose rows come first and are marked new (default: the newest run summary)."""
    if not storage.exists(storage.join(out, catalog.MANIFEST_DIR)):
        raise FileNotFoundError(f"no manifest under {storage.redact(out)}: give the OUTPUT of `rasr enhance`")
    table = manifest.read_manifest(out)
    runs, n_runs = runlog.latest_runs(out)
    first_run = first_run or (runs[0].get("run_id") if runs else None)
    rows = _order(table.to_pylist(), first_run)
    thumbs = make_thumbnails(out, rows, workers)
    report, tmp = storage.join(out, REPORT_DIR), catalog.temp_dir(out)
    cats = sorted({c for r in rows if (c := _category(r))})
    n_pages = max(1, -(-len(rows) // page_size))
    for p in range(n_pages):
        chunk = rows[p * page_size:(p + 1) * page_size]
        html_rows = [row_html(r, p * page_size + k, thumbs, out, r["run_id"] == first_run) for k, r in enumerate(chunk)]
        storage.write_bytes(storage.join(report, "data", f"page-{p:05d}.js"),
                            f"RASR.page({p},[{','.join(map(pages.js_string, html_rows))}]);\n".encode(), tmp)
    cat_index = {c: i for i, c in enumerate(cats)}
    keys = {"st": [r["status"] for r in rows], "cat": [cat_index.get(_category(r), -1) for r in rows],
            "sim": [_sim(r) for r in rows], "path": [r["relpath"] for r in rows],
            "ms": [round(r["timings_ms"]["total"]) if r["timings_ms"] and r["timings_ms"].get("total") else None
                   for r in rows],
            "at": [round(r["processed_at"].timestamp()) if r["processed_at"] is not None else None for r in rows],
            "nw": [int(r["run_id"] == first_run) for r in rows]}
    storage.write_bytes(storage.join(report, "data", "keys.js"), f"RASR.keys({pages.script_json(keys)});\n".encode(), tmp)
    name = storage.redact(out)
    page = pages.fill(
        TEMPLATE, title=esc(f"Results: {name.rstrip('/').rsplit('/', 1)[-1]}"),
        subtitle=esc(f"{name} - written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"),
        css=pages.CSS, page_css=PAGE_CSS, summary=summary_html(rows, runs, first_run, n_runs), failures=failures_html(rows),
        category_options="".join(f'<option value="{i}">{esc(c)}</option>' for i, c in enumerate(cats)),
        viewer_js=pages.VIEWER_JS, app_js=APP_JS,
        meta=pages.script_json({"total": len(rows), "pages": n_pages, "pageSize": page_size}))
    index = storage.join(report, "index.html")
    storage.write_bytes(index, page.encode(), tmp)  # last: it never names a page not yet written
    _remove_stale_pages(report, n_pages)
    return {"report": index, "rows": len(rows), "pages": n_pages, "thumbs_made": thumbs["made"],
            "thumbs_reused": thumbs["reused"], "refs_made": thumbs["refs_made"], "thumbs_failed": len(thumbs["failed"]),
            "first_run": first_run}


def _remove_stale_pages(report: str, n_pages: int) -> None:
    """Data pages of an earlier, longer report (e.g. before `rasr gc`): never linked, removed anyway."""
    fs, base = storage.filesystem(storage.join(report, "data"))
    for p in fs.ls(base, detail=False) if fs.exists(base) else []:
        name = posixpath.basename(p)
        if name.startswith("page-") and name.endswith(".js") and int(name[5:10]) >= n_pages:
            fs.rm(p)
