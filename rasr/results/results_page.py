"""The results page of an enhance output: what the runs did, to look at rather than read.

`append_run(OUTPUT, run_id, rows)` (the end of every enhance run) adds one run's rows to OUTPUT/report/ (a folder
or an s3:// prefix) reading nothing of earlier runs but the rows it supersedes; `write_report(OUTPUT)` (`rasr
report`) writes it anew from the whole manifest. The page opens from the folder in a browser, with no server:

  report/index.html                 run summary, failures by reason, filters, the page's script
  report/data/page-00000.js         50 rows each, as HTML, each run's rows on pages of their own; loaded when
                                    shown (the latest run first, then the earlier runs newest first)
  report/data/keys-00000.js         status, category, similarity, time, path of 10,000 rows each: what filters
                                    and sorts need, loaded on their first use
  report/data/state.json, rows-*.parquet   what the next run needs to add its rows (rasr/results/results_page_state.py)
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
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
from PIL import Image, features

from rasr import catalog, manifest, runlog, storage
from rasr.restoration import images
from rasr.results import html
from rasr.results import results_page_state as S
from rasr.results.html import esc
from rasr.results.results_page_html import APP_JS, PAGE_CSS, TEMPLATE

REPORT_DIR = "report"
PAGE_SIZE = 50           # rows per data file, and rows shown per "show more"
KEY_CHUNK = 10_000       # rows per key file (what filters and sorts read)
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


def _checked(report: str, rows: list[dict], workers: int) -> set[str]:
    """Of the thumbnails `rows` would show that others make (references, transfer previews), those that exist: a
    check each (concurrent), not a listing of report/thumbs. Sprites are not looked for: a new row's sprite is new
    (named by its input's bytes and config), at worst made again."""
    wanted = {ref_path(rid) for r in rows if r["status"] == "ok" for rid in r["ref_ids"] or []}
    wanted |= {transfer_path(r) for r in rows if r.get("ref_match") == "same_scene" and r["ref_used"]}
    fs, base = storage.filesystem(report)
    wanted = sorted(wanted)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = pool.map(lambda p: fs.exists(f"{base.rstrip('/')}/{p}"), wanted)
        return {p for p, ok in zip(wanted, found) if ok}


def make_thumbnails(out: str, rows: list[dict], workers: int = 8, listing: bool = True) -> dict:
    """Sprites of ok rows and thumbnails of their references that report/thumbs lacks (one listing of it, or with
    listing=False a check per thumbnail: a night's few rows in an archive's many).

    Returns {"made", "reused", "failed": {relpath: reason}, "have": set of existing paths}."""
    report = storage.join(out, REPORT_DIR)
    have = _existing(report) if listing else _checked(report, rows, workers)
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


def row_html(r: dict, i: int, thumbs: dict, out: str) -> str:
    """One row of the page: viewers, references, facts (the page's script marks the rows of the run shown first
    as new: a page written once stays right)."""
    sim, status = _sim(r), r["status"]
    prev = ""
    path = sprite_path(r) if status == "ok" else None
    if path and path in thumbs["have"] and r["out_width"]:
        tw, th, cw, ch = layout(r["out_width"], r["out_height"])
        width = 2 * tw + 2 * cw
        prev = (html.viewer(path, path, tw, th, before_x=0, after_x=tw, image_width=width,
                             caption=f"{r['width']}x{r['height']} &rarr; {r['out_width']}x{r['out_height']}")
                + html.viewer(path, path, cw, ch, before_x=2 * tw, after_x=2 * tw + cw, image_width=width,
                               labels=("original", "enhanced 1:1"), zoom=True,
                               caption=f"detail, {cw}x{ch} output pixels"))
    elif status == "ok":
        prev = f'<div class="nopv">no preview: {esc(thumbs["failed"].get(r["relpath"], "output not found"))}</div>'
    else:
        prev = f'<div class="nopv">{esc(status)}: nothing to show</div>'
    link = _link(out, r["output_uri"] if status == "ok" else r["source_uri"])
    name = f'<a href="{esc(link)}">{esc(r["relpath"])}</a>' if link else esc(r["relpath"])
    badges = f'<span class="badge {esc(status)}">{esc(status)}</span><span class="badge new">new</span>'
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
    parts.append(html.key_values(facts).replace('class="t"', 'class="kv"'))
    return (f'<div class="row" data-i="{i}" data-st="{esc(status)}" data-p="{esc(r["relpath"])}" '
            f'data-sim="{"" if sim is None else sim}"><div class="pv">{prev}</div><div class="info">{"".join(parts)}'
            f"</div></div>")


# ---- summary --------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, dt.datetime):
        return f"{v:%Y-%m-%d %H:%M:%S} UTC"
    return "-" if v is None else str(v)


def summary_html(state: dict, runs: list[dict], first_run: str | None, n_runs: int = 0) -> str:
    """The summary cards: all images (the state's tallies: each input counted once, in its newest row), the latest
    run, the runs."""
    t = state["tally"]
    status = t["status"]
    ok = status.get("ok", 0)
    counted = lambda key: ", ".join(f"{k} ({n})" for k, n in sorted(t[key].items(), key=lambda kv: (-kv[1], kv[0])))
    sims = S.hist_stats(t["sim"], S.decode_sim)
    totals, restores = S.hist_stats(t["ms"], S.decode_ms), S.hist_stats(t["restore"], S.decode_ms)
    new = next((r[1] for r in state["runs"] if r[3] == first_run), 0) if first_run else None
    when = [dt.datetime.fromtimestamp(t[k], dt.timezone.utc) for k in ("first_at", "last_at") if t[k] is not None]
    facts = {"images": f"{sum(status.values())}: {ok} ok, {status.get('error', 0)} failed, "
                       f"{status.get('skipped', 0)} skipped",
             "new in the latest run": "-" if new is None else new,
             "generator": counted("generator") or "-", "weights": counted("weights_id") or "-",
             "encoder": counted("encoder") or "-", "configs": counted("config_hash") or "-",
             "gallery": counted("gallery") or "-",
             "references used": f"{t['ref_used']} of {ok}",
             "similarity": (f"median {sims[0]:.3f}, min {sims[1]:.3f}, max {sims[2]:.3f}" if sims else "-"),
             "time per image": (f"median {_ms(totals[0])} ms (restore {_ms(restores[0] if restores else 0)} ms)"
                                if totals else "-"),
             "processed": f"{_fmt(when[0])} to {_fmt(when[1])}" if when else "-"}
    if state["superseded"]:
        facts["images"] += f" ({state['superseded']} earlier rows of inputs enhanced again are hidden)"
    cards = [f"<div><h3>All images</h3>{html.key_values(facts)}</div>"]
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
                          f"{html.key_values({k: json.dumps(v) for k, v in sorted(cfg.items())})}</details>")
            except ValueError:
                config = f"<details><summary>configuration</summary><code>{esc(last['config'])}</code></details>"
        cards.append(f"<div><h3>Latest run</h3>{html.key_values(run_facts)}{config}</div>")
        if len(runs) > 1:
            head = ["run", "finished", "processed", "ok", "failed", "seconds"]
            body = [[esc(r.get("run_id")), esc(_fmt(r.get("finished_at"))), *(esc(_fmt(r.get(k))) for k in head[2:])]
                    for r in runs[:10]]
            table = html.table(head, body, numeric={2, 3, 4, 5})
            cards.append(f"<div><h3>Runs ({max(n_runs, len(runs))}, newest first)</h3>{table}</div>")
    return f'<h2>Summary</h2><div class="cards">{"".join(cards)}</div>'


def failures_html(state: dict, limit: int = 30) -> str:
    """Failed and skipped inputs grouped by reason, most frequent first, with a few examples each."""
    parts = []
    for status, title in (("error", "Failures"), ("skipped", "Skipped")):
        groups = state["tally"]["fail"][status]
        if not groups:
            continue
        ranked = sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))
        body = [[esc(reason), str(n), esc(", ".join(ex) + (" ..." if n > len(ex) else ""))]
                for reason, (n, ex) in ranked[:limit]]
        more = (f'<p class="mut">{len(ranked) - limit} more reasons: filter the images by status.</p>'
                if len(ranked) > limit else "")
        total = sum(n for n, _ in groups.values())
        parts.append(f"<h2>{title} ({total})</h2>{html.table(['reason', 'images', 'examples'], body, numeric={1})}{more}")
    return "".join(parts)


# ---- writing --------------------------------------------------------------------------------------
#
# report/data/page-NNNNN.js   rows as HTML, PAGE_SIZE per file; each run's rows start a new page, so a run appends
#                             pages and never rewrites an earlier one (shown: that run first, then newest first)
# report/data/keys-NNNNN.js   status, category, similarity, time, processed time and path of KEY_CHUNK rows
#                             (global row numbers); a run rewrites only the last, partial chunk
# report/data/state.json, rows-*.parquet: rasr/results/results_page_state.py

def write_report(out: str, first_run: str | None = None, page_size: int = PAGE_SIZE, workers: int = 8) -> dict:
    """Write OUTPUT/report/ anew from the whole manifest (`rasr report`; after gc); returns what was done.

    first_run: the run whose rows come first and are marked new (default: the latest run)."""
    if not storage.exists(storage.join(out, catalog.MANIFEST_DIR)):
        raise FileNotFoundError(f"no manifest under {storage.redact(out)}: give the OUTPUT of `rasr enhance`")
    rows = manifest.read_manifest(out).to_pylist()
    by_run: dict[str | None, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["processed_at"] is None, r["processed_at"] or 0)):
        by_run.setdefault(r["run_id"], []).append(r)  # runs in the order they first processed something ...
    by_run = {run: sorted(group, key=lambda r: r["relpath"]) for run, group in by_run.items()}  # ... paths in each
    report = storage.join(out, REPORT_DIR)
    thumbs = make_thumbnails(out, rows, workers)
    with _report_lease(out):
        state = S.empty(page_size)
        records = []
        for run_id, group in by_run.items():
            records += _append(out, state, run_id, group, thumbs)
        S.write_index(report, state, records, catalog.temp_dir(out))
        res = _finish(out, state, first_run or (state["runs"][-1][3] if state["runs"] else None))
        _remove_stale(report, state)
    return {**res, **_thumb_counts(thumbs)}


def append_run(out: str, run_id: str, rows: list[dict], page_size: int = PAGE_SIZE, workers: int = 8) -> dict:
    """Add one run's rows to OUTPUT/report/ (the end of every enhance run): its pages, the last key chunk, the state
    and index.html are written; nothing of earlier runs is read but the rows this run supersedes (found in the row
    index by path). Without a page of this layout yet, the page is written whole (`write_report`)."""
    report = storage.join(out, REPORT_DIR)
    with _report_lease(out):
        state = S.read(report, page_size)
        if state is not None:
            rows = sorted(rows, key=lambda r: r["relpath"])
            for rec in S.superseded(report, state, {r["relpath"] for r in rows}):
                S.tally(state, rec, -1)
                state["superseded"] += 1
            thumbs = make_thumbnails(out, rows, workers, listing=False)
            S.write_index(report, state, _append(out, state, run_id, rows, thumbs), catalog.temp_dir(out))
            replaced = S.merge_index(report, state, catalog.temp_dir(out))
            res = _finish(out, state, run_id)
            S.remove_index(report, replaced)  # the state naming the merged file is written: the parts can go
            return {**res, **_thumb_counts(thumbs)}
    return write_report(out, first_run=run_id, page_size=page_size, workers=workers)


def _thumb_counts(thumbs: dict) -> dict:
    return {"thumbs_made": thumbs["made"], "thumbs_reused": thumbs["reused"], "refs_made": thumbs["refs_made"],
            "thumbs_failed": len(thumbs["failed"])}


def _key_chunks(state: dict) -> int:
    return -(-state["rows"] // KEY_CHUNK)


@contextlib.contextmanager
def _report_lease(out: str, wait: float = 120.0):
    """One writer of report/ at a time (two runs finishing together, or `rasr report` during a run)."""
    from rasr.locks import Lease

    if storage.is_remote(out) and not out.startswith("s3://"):
        yield
        return
    lease = Lease(storage.join(out, catalog.LEASE_DIR, "report.json"), ttl=catalog.LEASE_TTL)
    deadline = time.monotonic() + wait
    while not lease.acquire():
        if time.monotonic() > deadline:
            raise TimeoutError("another run is writing the results page: run `rasr report OUTPUT` when it is done")
        time.sleep(0.5)
    try:
        yield
    finally:
        lease.release()


def _keys_uri(report: str, chunk: int) -> str:
    return storage.join(report, "data", f"keys-{chunk:05d}.js")


def _read_keys(report: str, chunk: int, upto: int) -> dict:
    """The first `upto` entries of a key chunk already written (a crash may have left more)."""
    text = storage.read_bytes(_keys_uri(report, chunk)).decode()
    keys = json.loads(text[text.index(",") + 1:text.rindex(")")])
    return {k: v[:upto] for k, v in keys.items()}


def _append(out: str, state: dict, run_id: str | None, rows: list[dict], thumbs: dict) -> list[dict]:
    """Write the pages and key chunks of `rows` (one run's, in the order shown) after the state's rows; update the
    state (not written here); returns the rows' index records."""
    if not rows:
        return []
    report, tmp = storage.join(out, REPORT_DIR), catalog.temp_dir(out)
    size, start, first_page = state["page_size"], state["rows"], state["pages"]
    n_pages = -(-len(rows) // size)
    for p in range(n_pages):
        chunk = rows[p * size:(p + 1) * size]
        html_rows = [row_html(r, start + p * size + k, thumbs, out) for k, r in enumerate(chunk)]
        storage.write_bytes(storage.join(report, "data", f"page-{first_page + p:05d}.js"),
                            f"RASR.page({first_page + p},[{','.join(map(html.js_string, html_rows))}]);\n".encode(),
                            tmp)
    cats = state["cats"]
    for r in rows:
        if (c := _category(r)) and c not in cats:
            cats.append(c)
    entries = {"st": [r["status"] for r in rows], "cat": [cats.index(c) if (c := _category(r)) else -1 for r in rows],
               "sim": [_sim(r) for r in rows], "path": [r["relpath"] for r in rows],
               "ms": [round(r["timings_ms"]["total"]) if r["timings_ms"] and r["timings_ms"].get("total") else None
                      for r in rows],
               "at": [round(r["processed_at"].timestamp()) if r["processed_at"] is not None else None for r in rows]}
    tail = state.pop("_keys_tail", None)  # the partial chunk, when this process wrote it (a rebuild's runs)
    at = start
    while at < start + len(rows):
        chunk, offset = divmod(at, KEY_CHUNK)
        if offset:
            keys = tail if tail is not None else _read_keys(report, chunk, offset)
        else:
            keys = {k: [] for k in entries}
        take = min(KEY_CHUNK - offset, start + len(rows) - at)
        for k, v in entries.items():
            keys[k] = keys[k] + v[at - start:at - start + take]
        storage.write_bytes(_keys_uri(report, chunk), f"RASR.keys({chunk},{html.script_json(keys)});\n".encode(), tmp)
        at += take
        tail = keys if at % KEY_CHUNK else None
    if tail is not None:
        state["_keys_tail"] = tail
    records = [S.record(r, start + k) for k, r in enumerate(rows)]
    for rec in records:
        S.tally(state, rec, 1)
    state["runs"].append([start, len(rows), first_page, run_id])
    state["rows"] += len(rows)
    state["pages"] += n_pages
    return records


def _finish(out: str, state: dict, first_run: str | None) -> dict:
    """Commit: state.json, then index.html (it never names a page not yet written)."""
    report, tmp = storage.join(out, REPORT_DIR), catalog.temp_dir(out)
    state.pop("_keys_tail", None)
    storage.write_bytes(storage.join(report, "data", S.STATE), json.dumps(state).encode(), tmp)
    runs, n_runs = runlog.latest_runs(out)
    first = next((i for i, r in enumerate(state["runs"]) if r[3] == first_run), len(state["runs"]) - 1)
    name = storage.redact(out)
    cats = state["cats"]
    page = html.fill(
        TEMPLATE, title=esc(f"Results: {name.rstrip('/').rsplit('/', 1)[-1]}"),
        subtitle=esc(f"{name} - written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"),
        css=html.CSS, page_css=PAGE_CSS, summary=summary_html(state, runs, first_run, n_runs),
        failures=failures_html(state),
        category_options="".join(f'<option value="{i}">{esc(c)}</option>'
                                 for c, i in sorted((c, i) for i, c in enumerate(cats))),
        viewer_js=html.VIEWER_JS, app_js=APP_JS,
        meta=html.script_json({"total": state["rows"] - state["superseded"], "rows": state["rows"],
                                "pageSize": state["page_size"], "keyChunk": KEY_CHUNK,
                                "keyChunks": _key_chunks(state),
                                "runs": [r[:3] for r in state["runs"]], "first": first}),
        first_page=f'<script src="data/page-{state["runs"][first][2]:05d}.js"></script>' if state["runs"] else "")
    index = storage.join(report, "index.html")
    storage.write_bytes(index, page.encode(), tmp)
    return {"report": index, "rows": state["rows"] - state["superseded"], "pages": state["pages"],
            "first_run": first_run}


def _remove_stale(report: str, state: dict) -> None:
    """Data files of an earlier, longer page (e.g. before `rasr gc`) or of an earlier layout: never linked,
    removed anyway."""
    fs, base = storage.filesystem(storage.join(report, "data"))
    index = {name for name, _ in state["index"]}
    chunks = _key_chunks(state)
    for p in fs.ls(base, detail=False) if fs.exists(base) else []:
        name = posixpath.basename(p)
        stale = ((name.startswith("page-") and name.endswith(".js") and int(name[5:10]) >= state["pages"])
                 or (name.startswith("keys-") and name.endswith(".js") and int(name[5:10]) >= chunks)
                 or name == "keys.js" or (name.startswith(S.INDEX_PREFIX) and name not in index))
        if stale:
            fs.rm(p)
