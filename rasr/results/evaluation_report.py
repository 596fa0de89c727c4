"""Evaluation outputs people read: Table 1 / Table 5 in Markdown, and a self-contained HTML report
(real tables, the shared before/after viewer of rasr/results/html.py, one template)."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pandas as pd

from rasr import storage
from rasr.restoration import images
from rasr.results import html
from rasr.retrieval.encoder_names import TABLE5_ENCODERS
from rasr.research.metrics import METRICS, higher_is_better
from rasr.results.html import esc

COLUMNS = ("psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "clipiqa")  # Table 1's order
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID", "niqe": "NIQE",
          "musiq": "MUSIQ", "clipiqa": "CLIPIQA"}
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "dists": 4, "fid": 2, "niqe": 4, "musiq": 2, "clipiqa": 4}


def run_label(method: str, mode: str) -> str:
    return method if mode == "none" else f"{method} ({mode})"


def summarize(rows: pd.DataFrame, fid: dict[tuple[str, str], float | None] | None = None) -> pd.DataFrame:
    """Mean of every metric per (method, ref_mode) over the rows that succeeded (+ set-level FID)."""
    ok = rows[(rows["status"] == "ok") & (rows["method"] != "-")]
    if ok.empty:
        return pd.DataFrame(columns=["method", "ref_mode", "images", *COLUMNS])
    agg = ok.groupby(["method", "ref_mode"], sort=False)
    out = agg[list(METRICS)].mean(numeric_only=True).reset_index()
    out.insert(2, "images", agg.size().values)
    out.insert(3, "restore_ms", agg["restore_ms"].mean().values)
    out["fid"] = [(fid or {}).get((m, r)) for m, r in zip(out["method"], out["ref_mode"])]
    return out


def _cell(name: str, value, base, status: str) -> str:
    if status != "ok":
        return "unavailable"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    text = f"{value:.{DIGITS[name]}f}"
    if base is not None and not (isinstance(base, float) and np.isnan(base)):
        text += f" ({value - base:+.{DIGITS[name]}f})"
    return text


def _baseline_row(summary: pd.DataFrame, baseline: str | None):
    if not baseline:
        return None
    match = summary[(summary["method"] == baseline)]
    return match.iloc[0] if len(match) else None


def _is_base(r, base_row) -> bool:
    return base_row is not None and r["method"] == base_row["method"] and r["ref_mode"] == base_row["ref_mode"]


def table1_markdown(summary: pd.DataFrame, status: dict[str, str], baseline: str | None) -> str:
    """Rows = methods, columns = the paper's metrics, (delta) against the baseline method; the last row
    says which metrics are unavailable and why."""
    cols = [c for c in COLUMNS if c in status]
    arrows = {c: "↑" if higher_is_better(c) else "↓" for c in cols}
    head = "| Method | Images | " + " | ".join(f"{LABELS[c]}{arrows[c]}" for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    base_row = _baseline_row(summary, baseline)
    for _, r in summary.iterrows():
        is_base = _is_base(r, base_row)
        cells = [_cell(c, r.get(c), None if (base_row is None or is_base) else base_row.get(c), status[c])
                 for c in cols]
        label = run_label(r["method"], r["ref_mode"]) + (" *(baseline)*" if is_base else "")
        lines.append(f"| {label} | {int(r['images'])} | " + " | ".join(cells) + " |")
    lines.append("| *availability* | | " + " | ".join(status[c].replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def _table5(retrieval: pd.DataFrame, summary: pd.DataFrame, encoder_status: dict[str, str], method: str | None,
            primary: str | None) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Table 5 as text cells: (head, [(status, [encoder, queries, accuracy, similarity, *metrics])])."""
    metric_cols = ["psnr", "ssim", "lpips", "dists"] if method else []
    head = ["Encoder", "Queries", "Top-1 category acc.", "Mean similarity"] + [LABELS[c] for c in metric_cols]
    rows = []
    for enc in ("random", *TABLE5_ENCODERS):
        st = encoder_status.get(enc, "not requested")
        sub = retrieval[retrieval["encoder"] == enc] if len(retrieval) else retrieval
        if st != "ok" or sub.empty:
            rows.append((st, [enc, "-", st, "-"] + ["-"] * len(metric_cols)))
            continue
        acc = f"{100 * sub['match'].mean():.1f}%"
        sim = "-" if sub["similarity"].isna().all() else f"{sub['similarity'].mean():.4f}"
        cells = []
        if method:
            mode = "random" if enc == "random" else ("retrieved" if enc == primary else f"retrieved:{enc}")
            m = summary[(summary["method"] == method) & (summary["ref_mode"] == mode)]
            cells = [f"{m.iloc[0][c]:.{DIGITS[c]}f}" if len(m) and pd.notna(m.iloc[0][c]) else "-"
                     for c in metric_cols]
        rows.append(("ok", [enc, str(len(sub)), acc, sim] + cells))
    return head, rows


def table5_markdown(retrieval: pd.DataFrame, summary: pd.DataFrame, encoder_status: dict[str, str],
                    method: str | None, primary: str | None) -> str:
    """Retrieval encoders: top-1 category accuracy under degradation (+ the method's metrics with them)."""
    head, rows = _table5(retrieval, summary, encoder_status, method, primary)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for _, cells in rows])


# ---- HTML ---------------------------------------------------------------------------------------

def _num(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def table1_html(summary: pd.DataFrame, status: dict[str, str], baseline: str | None) -> str:
    """Table 1 as an HTML table: numbers right-aligned, the best value of each column marked, deltas
    against the baseline coloured (green better, red worse); unavailable metrics read "n/a"."""
    cols = [c for c in COLUMNS if c in status]
    head = ["Method", "Images"] + [f"{LABELS[c]}{'↑' if higher_is_better(c) else '↓'}" for c in cols]
    base_row = _baseline_row(summary, baseline)
    records = [r for _, r in summary.iterrows()]
    body, classes, marks = [], [], {}
    for j, c in enumerate(cols, start=2):
        values = [r.get(c) for r in records]
        good = [v for v in values if _num(v)]
        if status[c] != "ok":
            marks.update({(i, j): "na" for i in range(len(records))})
        elif len(good) > 1:  # ties (at the digits shown) are all marked
            best = round(max(good) if higher_is_better(c) else min(good), DIGITS[c])
            marks.update({(i, j): "best" for i, v in enumerate(values) if _num(v) and round(v, DIGITS[c]) == best})
    for r in records:
        is_base = _is_base(r, base_row)
        cells = [esc(run_label(r["method"], r["ref_mode"])) + (' <span class="mut">(baseline)</span>' if is_base else ""),
                 str(int(r["images"]))]
        for c in cols:
            v, b = r.get(c), None if (base_row is None or is_base) else base_row.get(c)
            if status[c] != "ok":
                cells.append("n/a")
            elif not _num(v):
                cells.append("-")
            else:
                text = f"{v:.{DIGITS[c]}f}"
                if _num(b) and round(v - b, DIGITS[c]) != 0:
                    better = (v > b) == higher_is_better(c)
                    text += f'<span class="dl {"good" if better else "bad"}">{v - b:+.{DIGITS[c]}f}</span>'
                cells.append(text)
        body.append(cells)
        classes.append("base" if is_base else "")
    return html.table(head, body, numeric=set(range(1, len(head))), row_classes=classes, cell_classes=marks)


def table5_html(retrieval: pd.DataFrame, summary: pd.DataFrame, encoder_status: dict[str, str],
                method: str | None, primary: str | None) -> str:
    """Table 5 as an HTML table; encoders that did not run say so in one word, their reasons below it."""
    head, rows = _table5(retrieval, summary, encoder_status, method, primary)
    body, marks, reasons = [], {}, []
    for i, (st, cells) in enumerate(rows):
        if st != "ok":
            word = "not requested" if st == "not requested" else "unavailable"
            body.append([esc(cells[0]), "-", word] + ["-"] * (len(cells) - 3))
            marks[(i, 2)] = "na"
            if word == "unavailable":
                reasons.append(f"<li><b>{esc(cells[0])}</b>: {esc(st.removeprefix('unavailable: '))}</li>")
        else:
            body.append([esc(c) for c in cells])
    for j in [2] + list(range(4, len(head))):  # accuracy and the method's metrics: mark the best
        name = next((c for c in COLUMNS if LABELS[c] == head[j]), None)
        values = {i: float(cells[j].rstrip("%")) for i, (st, cells) in enumerate(rows) if st == "ok" and cells[j] != "-"}
        if len(values) > 1:
            best = (min if name and not higher_is_better(name) else max)(values.values())
            marks.update({(i, j): "best" for i, v in values.items() if v == best})
    note = f'<div class="note">Encoders not evaluated:<ul>{"".join(reasons)}</ul></div>' if reasons else ""
    return html.table(head, body, numeric=set(range(1, len(head))), cell_classes=marks) + note


_MISSING = re.compile(r"(\S+) (?:is missing|has the wrong sha256) \(copy it from (\S+)\)")


def unavailable_note(status: dict[str, str]) -> str:
    """One short note: which metrics are unavailable, and each weight file they need with where it goes."""
    off = {n: s for n, s in status.items() if s != "ok"}
    if not off:
        return ""
    files: dict[str, tuple[str, list[str]]] = {}
    other = []
    for name, reason in off.items():
        found = _MISSING.findall(reason)
        for path, url in found:
            files.setdefault(path, (url, []))[1].append(LABELS.get(name, name))
        if not found:
            other.append(f"<li><b>{esc(LABELS.get(name, name))}</b>: {esc(reason.removeprefix('unavailable: '))}</li>")
    items = [f"<li><code>{esc(os.path.basename(p))}</code> &rarr; <code>{esc(os.path.dirname(p))}/</code> "
             f"<span class=\"mut\">({esc(', '.join(m))}; from {esc(url)})</span></li>" for p, (url, m) in files.items()]
    names = ", ".join(LABELS.get(n, n) for n in off)
    return (f'<div class="note"><b>Unavailable metrics: {esc(names)}.</b> They are computed as soon as these '
            f'files are in place (folders follow $TORCH_HOME/hub):<ul>{"".join(items + other)}</ul></div>')


def _png(rgb: np.ndarray, size: int) -> str:
    """A PNG data URI of `rgb` scaled (nearest) to `size` pixels wide."""
    from PIL import Image

    im = Image.fromarray(rgb)
    im = im.resize((size, max(1, round(size * im.height / im.width))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return html.data_uri(buf.getvalue(), "image/png")


def _img_tag(rgb: np.ndarray, title: str, size: int = 160) -> str:
    return f'<figure><img src="{_png(rgb, size)}" alt="{esc(title)}"><figcaption>{esc(title)}</figcaption></figure>'


def _crop(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y, x, h, w = box
    return rgb[y:y + h, x:x + w]


def _load(uri: str | None) -> np.ndarray | None:
    if not uri:
        return None
    try:
        return images.load_rgb(storage.read_bytes(uri))
    except Exception:  # noqa: BLE001 - a missing picture leaves a gap, not a failed report
        return None


def _plots(rows: pd.DataFrame, status: dict[str, str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = rows[rows["status"] == "ok"]
    names = [m for m in METRICS if status.get(m) == "ok" and ok[m].notna().any()]
    if not names:
        return "<p>No metric values to plot.</p>"
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        groups = [(run_label(m, r), g[name].dropna().values) for (m, r), g in ok.groupby(["method", "ref_mode"])]
        ax.boxplot([v for _, v in groups], tick_labels=[lbl for lbl, _ in groups], vert=True)
        ax.set_title(f"{LABELS[name]} {'↑' if higher_is_better(name) else '↓'}")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img class="plot" src="{html.data_uri(buf.getvalue(), "image/png")}" alt="metric distributions">'


def _examples(rows: pd.DataFrame, n_examples: int, crop: int, rank_by: str) -> str:
    """Per method, the N best and worst images: a before/after viewer (LR | the method) and the strip
    LR | each method | reference | GT, on the same centre crop."""
    ok = rows[(rows["status"] == "ok") & (rows["method"] != "-")]
    runs = list(dict.fromkeys(zip(ok["method"], ok["ref_mode"])))
    by_image = {k: g for k, g in ok.groupby("relpath")}
    sections = []
    for method, mode in runs:
        sub = ok[(ok["method"] == method) & (ok["ref_mode"] == mode)].dropna(subset=[rank_by])
        if sub.empty:
            continue
        sub = sub.sort_values(rank_by, ascending=not higher_is_better(rank_by))
        picks = [("best", r) for _, r in sub.head(n_examples).iterrows()]
        picks += [("worst", r) for _, r in sub.tail(n_examples).iloc[::-1].iterrows()
                  if r["relpath"] not in {p[1]["relpath"] for p in picks}]
        blocks = []
        for tag, r in picks:
            gt = _load(r["gt_uri"])
            if gt is None:
                continue
            h, w = gt.shape[:2]
            c = min(crop, h, w)
            box = ((h - c) // 2, (w - c) // 2, c, c)
            figs, lr_crop, own = [], None, None
            lr = _load(r["lr_uri"])
            if lr is not None:
                lr_crop = _crop(np.repeat(np.repeat(lr, 4, 0), 4, 1)[:h, :w], box)
                figs.append(_img_tag(lr_crop, "LR (x4 nearest)"))
            for (m2, r2) in runs:
                other = by_image[r["relpath"]]
                hit = other[(other["method"] == m2) & (other["ref_mode"] == r2)]
                sr = _load(hit.iloc[0]["sr_uri"]) if len(hit) else None
                if sr is not None:
                    val = hit.iloc[0][rank_by]
                    figs.append(_img_tag(_crop(sr, box), f"{run_label(m2, r2)} {LABELS[rank_by]} {val:.2f}"))
                    own = _crop(sr, box) if (m2, r2) == (method, mode) else own
            ref = _load(r["ref_uri"]) if isinstance(r["ref_uri"], str) else None
            if ref is not None:
                figs.append(_img_tag(ref, f"reference ({r['ref_category'] or '-'})"))
            figs.append(_img_tag(_crop(gt, box), "GT"))
            view = ""
            if lr_crop is not None and own is not None:
                view = html.viewer(_png(lr_crop, 2 * c), _png(own, 2 * c), 2 * c, 2 * c, lazy=False, pixelated=True,
                                    labels=("LR x4", run_label(method, mode)), caption="drag to compare")
            blocks.append(f"<h4>{tag}: {esc(r['relpath'])} ({LABELS[rank_by]} {r[rank_by]:.2f})</h4>"
                          f'<div class="strip">{view}{"".join(figs)}</div>')
        sections.append(f"<h3>{esc(run_label(method, mode))}</h3>{''.join(blocks)}")
    return "".join(sections)


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RASR evaluation report</title>
<style>{{css}} img.plot{max-width:100%}</style></head><body>
<pre id="page-errors" hidden></pre>
<h1>RASR evaluation report</h1>
<h2>Table 1: methods</h2>{{table1}}{{note}}
{{table5}}
<h2>Metric distributions</h2>{{plots}}
<h2>Best and worst images by {{rank_label}}</h2>{{examples}}
<script>{{viewer_js}}</script>
</body></html>
"""


def html_report(rows: pd.DataFrame, summary: pd.DataFrame, status: dict[str, str], baseline: str | None = None,
                table5: str | None = None, n_examples: int = 3, crop: int = 96, rank_by: str = "psnr") -> str:
    """One self-contained HTML file: Table 1 (and `table5`, from table5_html) as HTML tables, a note on
    unavailable metrics, metric distributions, and the N best and worst images of each method."""
    return html.fill(TEMPLATE, css=html.CSS, viewer_js=html.VIEWER_JS,
                      table1=table1_html(summary, status, baseline), note=unavailable_note(status),
                      table5=f"<h2>Table 5: retrieval encoders</h2>{table5}" if table5 else "",
                      plots=_plots(rows, status), rank_label=LABELS[rank_by],
                      examples=_examples(rows, n_examples, crop, rank_by))
