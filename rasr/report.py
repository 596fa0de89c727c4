"""Evaluation outputs people read: Table 1 / Table 5 in Markdown, and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd

from rasr import images, storage
from rasr.metrics import METRICS, higher_is_better

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


def table1_markdown(summary: pd.DataFrame, status: dict[str, str], baseline: str | None) -> str:
    """Rows = methods, columns = the paper's metrics, (delta) against the baseline method; the last row
    says which metrics are unavailable and why."""
    cols = [c for c in COLUMNS if c in status]
    arrows = {c: "↑" if higher_is_better(c) else "↓" for c in cols}
    head = "| Method | Images | " + " | ".join(f"{LABELS[c]}{arrows[c]}" for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    base_row = None
    if baseline:
        match = summary[(summary["method"] == baseline)]
        base_row = match.iloc[0] if len(match) else None
    for _, r in summary.iterrows():
        is_base = base_row is not None and r["method"] == base_row["method"] and r["ref_mode"] == base_row["ref_mode"]
        cells = [_cell(c, r.get(c), None if (base_row is None or is_base) else base_row.get(c), status[c])
                 for c in cols]
        label = run_label(r["method"], r["ref_mode"]) + (" *(baseline)*" if is_base else "")
        lines.append(f"| {label} | {int(r['images'])} | " + " | ".join(cells) + " |")
    lines.append("| *availability* | | " + " | ".join(status[c].replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def table5_markdown(retrieval: pd.DataFrame, summary: pd.DataFrame, encoder_status: dict[str, str],
                    method: str | None, primary: str | None) -> str:
    """Retrieval encoders: top-1 category accuracy under degradation (+ the method's metrics with them)."""
    metric_cols = ["psnr", "ssim", "lpips", "dists"] if method else []
    head = ["Encoder", "Queries", "Top-1 category acc.", "Mean similarity"] + [LABELS[c] for c in metric_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for enc in ("random", "vgg16", "clip", "dinov2", "efficientnet-lite0"):
        st = encoder_status.get(enc, "not requested")
        sub = retrieval[retrieval["encoder"] == enc] if len(retrieval) else retrieval
        if st != "ok" or sub.empty:
            lines.append(f"| {enc} | - | {st} | - |" + " - |" * len(metric_cols))
            continue
        acc = f"{100 * sub['match'].mean():.1f}%"
        sim = "-" if sub["similarity"].isna().all() else f"{sub['similarity'].mean():.4f}"
        cells = []
        if method:
            mode = "random" if enc == "random" else ("retrieved" if enc == primary else f"retrieved:{enc}")
            m = summary[(summary["method"] == method) & (summary["ref_mode"] == mode)]
            cells = [f"{m.iloc[0][c]:.{DIGITS[c]}f}" if len(m) and pd.notna(m.iloc[0][c]) else "-"
                     for c in metric_cols]
        lines.append(f"| {enc} | {len(sub)} | {acc} | {sim} |" + "".join(f" {c} |" for c in cells))
    return "\n".join(lines)


# ---- HTML ---------------------------------------------------------------------------------------

def _img_tag(rgb: np.ndarray, title: str, size: int = 160) -> str:
    from PIL import Image

    im = Image.fromarray(rgb)
    im = im.resize((size, max(1, round(size * im.height / im.width))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


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
    return f'<img class="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="metric distributions">'


def html_report(rows: pd.DataFrame, table1: str, table5: str | None, status: dict[str, str],
                n_examples: int = 3, crop: int = 96, rank_by: str = "psnr") -> str:
    """One self-contained HTML file: tables, metric distributions and side-by-side crops
    (LR | each method | reference | GT) of the N best and worst images of each method."""
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
            figs = []
            lr = _load(r["lr_uri"])
            if lr is not None:
                lr_up = np.repeat(np.repeat(lr, 4, 0), 4, 1)[:h, :w]
                figs.append(_img_tag(_crop(lr_up, box), "LR (x4 nearest)"))
            for (m2, r2) in runs:
                other = by_image[r["relpath"]]
                hit = other[(other["method"] == m2) & (other["ref_mode"] == r2)]
                sr = _load(hit.iloc[0]["sr_uri"]) if len(hit) else None
                if sr is not None:
                    val = hit.iloc[0][rank_by]
                    figs.append(_img_tag(_crop(sr, box), f"{run_label(m2, r2)} {LABELS[rank_by]} {val:.2f}"))
            ref = _load(r["ref_uri"]) if isinstance(r["ref_uri"], str) else None
            if ref is not None:
                figs.append(_img_tag(ref, f"reference ({r['ref_category'] or '-'})"))
            figs.append(_img_tag(_crop(gt, box), "GT"))
            blocks.append(f"<h4>{tag}: {html.escape(r['relpath'])}</h4><div class=row>{''.join(figs)}</div>")
        sections.append(f"<h3>{html.escape(run_label(method, mode))}</h3>{''.join(blocks)}")
    md = lambda t: f"<pre>{html.escape(t)}</pre>"  # noqa: E731 - Markdown tables read fine preformatted
    unavailable = "".join(f"<li>{html.escape(n)}: {html.escape(s)}</li>" for n, s in status.items() if s != "ok")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>RASR evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em}} .row{{display:flex;gap:6px;flex-wrap:wrap}}
figure{{margin:0}} figcaption{{font-size:11px;max-width:160px}} img{{image-rendering:pixelated}}
img.plot{{image-rendering:auto;max-width:100%}} pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}</style>
</head><body>
<h1>RASR evaluation report</h1>
<h2>Table 1: methods</h2>{md(table1)}
{f"<h2>Table 5: retrieval encoders</h2>{md(table5)}" if table5 else ""}
{f"<h2>Unavailable metrics</h2><ul>{unavailable}</ul>" if unavailable else ""}
<h2>Metric distributions</h2>{_plots(rows, status)}
<h2>Best and worst images by {LABELS[rank_by]}</h2>{''.join(sections)}
</body></html>"""

