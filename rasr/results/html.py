"""What the two HTML reports share: page CSS, the before/after viewer (markup and JS), HTML tables,
escaping and filling a template. Plain HTML/CSS/JS written here: the pages open from a folder, offline,
with no server and nothing fetched from anywhere.

Each report has one template (rasr/results/evaluation_report.py for `rasr evaluate`,
rasr/results/results_page_html.py for the results page of an enhance output) with `{{name}}` slots filled by `fill()`.
"""

from __future__ import annotations

import base64
import html
import json
import re

CSS = """
:root{--fg:#1d2430;--mut:#5b6473;--line:#dde2ea;--head:#f3f5f8;--good:#137333;--bad:#b3261e;--acc:#2f6fde}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
 margin:0 auto;max-width:1320px;padding:14px 22px 40px}
h1{font-size:22px;margin:6px 0}h2{font-size:17px;margin:26px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 6px}h4{font-size:13px;margin:12px 0 4px;font-weight:600}
.mut{color:var(--mut)}code{font-size:12px;background:var(--head);padding:0 3px;border-radius:3px}
table.t{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
table.t th,table.t td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
table.t th{background:var(--head);font-weight:600;white-space:nowrap}
table.t .n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.t td.best{font-weight:700;background:#e6f4ea}table.t td.best::after{content:" \\2605";color:var(--good)}
table.t td.na{color:var(--mut);font-style:italic}table.t tr.base td{background:#fafbfc}
.dl{font-size:11px;margin-left:5px}.dl.good{color:var(--good)}.dl.bad{color:var(--bad)}
.note{background:#fff8e1;border:1px solid #f0d98c;border-radius:4px;padding:7px 12px;font-size:13px;margin:8px 0}
.note ul{margin:4px 0 0;padding-left:20px}
#page-errors{background:#fdecea;color:var(--bad);padding:6px 10px;white-space:pre-wrap}
.vw{display:inline-flex;flex-direction:column;margin:0 10px 6px 0;vertical-align:top}
.vw figcaption{font-size:11px;color:var(--mut);max-width:260px}
.ba{position:relative;overflow:hidden;background:#e9ecf1;cursor:ew-resize;user-select:none;touch-action:none}
.ba img{position:absolute;top:0;max-width:none;display:block}
.ba.px img{image-rendering:pixelated}
.ba-b{position:absolute;top:0;left:0;bottom:0;overflow:hidden;border-right:2px solid #fff;
 box-shadow:1px 0 0 rgba(0,0,0,.35)}
.ba-l{position:absolute;top:3px;font-size:10px;line-height:14px;background:rgba(0,0,0,.55);color:#fff;padding:0 4px;
 border-radius:3px;pointer-events:none}
.ba-l1{left:3px}.ba-l2{right:3px}
.ba-r{width:100%;margin:2px 0 0;height:14px}
.vw.z2 .ba{zoom:2}
.zb{font-size:11px;padding:0 6px;margin-left:4px;cursor:pointer}
figure{margin:0}.strip{display:flex;gap:6px;flex-wrap:wrap;align-items:flex-start}
.strip figcaption{font-size:11px;max-width:160px}.strip img{image-rendering:pixelated}
"""

# Slider, zoom and error capture, by event delegation: works for viewers written into the page and for
# viewers added later (rows of the results page arrive page by page). Uncaught errors and resources that
# fail to load are written into #page-errors, so a headless browser's DOM dump shows them.
VIEWER_JS = r"""
(function(){
  function report(msg){
    var el=document.getElementById('page-errors');
    if(el){el.hidden=false;el.textContent+=msg+'\n';}
  }
  window.addEventListener('error',function(e){
    var t=e.target;
    if(t&&t!==window&&(t.src||t.href)){report('failed to load '+(t.src||t.href));}
    else{report('error: '+e.message+' ('+(e.filename||'')+':'+(e.lineno||0)+')');}
  },true);
  window.addEventListener('unhandledrejection',function(e){report('error: '+e.reason);});
  function set(vw,x){
    x=Math.max(0,Math.min(100,Math.round(x)));
    vw.querySelector('.ba-b').style.width=x+'%';
    var r=vw.querySelector('.ba-r');
    if(r&&+r.value!==x){r.value=x;}
  }
  var drag=null;
  function move(e){
    var box=drag.getBoundingClientRect();
    set(drag.closest('.vw'),(e.clientX-box.left)/box.width*100);
  }
  document.addEventListener('input',function(e){
    if(e.target.classList&&e.target.classList.contains('ba-r')){set(e.target.closest('.vw'),+e.target.value);}
  });
  document.addEventListener('pointerdown',function(e){
    var b=e.target.closest&&e.target.closest('.ba');
    if(b){drag=b;move(e);e.preventDefault();}
  });
  document.addEventListener('pointermove',function(e){if(drag){move(e);}});
  document.addEventListener('pointerup',function(){drag=null;});
  document.addEventListener('click',function(e){
    if(e.target.classList&&e.target.classList.contains('zb')){
      var vw=e.target.closest('.vw');vw.classList.toggle('z2');
      e.target.textContent=vw.classList.contains('z2')?'1x':'2x';
    }
  });
  window.rasrViewer={set:set,report:report};
})();
"""


def esc(value) -> str:
    """Text for HTML content and attribute values (None as '')."""
    return "" if value is None else html.escape(str(value), quote=True)


def fill(template: str, **parts: str) -> str:
    """Put each part into its {{name}} slot; every slot must be given (a typo fails loudly)."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in parts:
            raise KeyError(f"template slot {{{{{m.group(1)}}}}} has no value")
        return str(parts[m.group(1)])

    return re.sub(r"\{\{(\w+)\}\}", sub, template)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def script_json(obj) -> str:
    """JSON safe to put inside a <script> element (no '</' can close it early)."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def js_string(text: str) -> str:
    """A single-quoted JS string literal (HTML with double-quoted attributes stays readable and short)."""
    for a, b in (("\\", "\\\\"), ("'", "\\'"), ("\n", "\\n"), ("\r", "\\r"), ("\u2028", "\\u2028"),
                 ("\u2029", "\\u2029"), ("</", "<\\/")):
        text = text.replace(a, b)
    return f"'{text}'"


def viewer(before: str, after: str, width: int, height: int, *, before_x: int = 0, after_x: int = 0,
           image_width: int | None = None, scale: float = 1.0, labels: tuple[str, str] = ("original", "enhanced"),
           caption: str = "", pixelated: bool = False, lazy: bool = True, zoom: bool = False) -> str:
    """A before/after viewer: `after` fills the frame, `before` covers its left part up to the slider.

    Both images may be one sprite: the frame shows the `width` x `height` region starting at x =
    `before_x` (resp. `after_x`) of an image `image_width` pixels wide (default: `width`), all scaled by
    `scale`. The range input under the frame (and dragging on it) moves the split."""
    w, h = round(width * scale), round(height * scale)
    iw = round((image_width or width) * scale)
    load = ' loading="lazy"' if lazy else ""

    def img(src: str, x: int, alt: str) -> str:
        return (f'<img src="{esc(src)}" alt="{esc(alt)}"{load} width="{iw}" '
                f'style="left:{-round(x * scale)}px">')

    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    zb = '<button type="button" class="zb" title="zoom">2x</button>' if zoom else ""
    return (f'<figure class="vw"><div class="ba{" px" if pixelated else ""}" style="width:{w}px;height:{h}px">'
            f'{img(after, after_x, labels[1])}<div class="ba-b" style="width:50%">{img(before, before_x, labels[0])}'
            f'</div><span class="ba-l ba-l1">{esc(labels[0])}</span><span class="ba-l ba-l2">{esc(labels[1])}</span>'
            f'</div><div style="display:flex;align-items:center"><input class="ba-r" type="range" min="0" max="100" '
            f'value="50" aria-label="{esc(labels[0])} / {esc(labels[1])}">{zb}</div>{cap}</figure>')


def table(head: list[str], rows: list[list], numeric: set[int] = frozenset(), row_classes: list[str] | None = None,
          cell_classes: dict[tuple[int, int], str] | None = None) -> str:
    """An HTML table. Cells are HTML already (escape text with esc()); columns in `numeric` are right-
    aligned in tabular figures; cell_classes[(row, col)] adds a class to one cell (e.g. "best")."""
    cell_classes = cell_classes or {}

    def cls(*names: str) -> str:
        names = [n for n in names if n]
        return f' class="{" ".join(names)}"' if names else ""

    out = ['<table class="t"><thead><tr>']
    out += [f"<th{cls('n' if j in numeric else '')}>{h}</th>" for j, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        out.append(f"<tr{cls((row_classes or [''] * len(rows))[i])}>")
        out += [f"<td{cls('n' if j in numeric else '', cell_classes.get((i, j), ''))}>{c}</td>"
                for j, c in enumerate(row)]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def key_values(items: dict) -> str:
    """A two-column table of label -> value (values are text)."""
    return table(["", ""], [[esc(k), esc(v)] for k, v in items.items()]).replace(
        "<thead><tr><th></th><th></th></tr></thead>", "")
