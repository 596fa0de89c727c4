"""A flow's summary as Prefect artifacts: a table of its figures, plus a markdown page linking the
results page and listing failures and example thumbnails."""

from __future__ import annotations

import base64
import os
import pathlib

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rasr import storage


def publish_summary(key: str, summary: dict, errors: list[dict] | None = None, title: str = "",
                    thumbnails: list[tuple[str, bytes, bytes]] | None = None, report: str | None = None) -> None:
    """A table artifact with the summary (+ a markdown artifact linking the results page `report` and
    listing failures and thumbnails)."""
    rows = [{"field": k, "value": str(v)} for k, v in summary.items() if not isinstance(v, (list, dict))]
    create_table_artifact(table=rows, key=key, description=title or key)
    parts = [f"# {title or key}", ""]
    if report:
        if storage.is_remote(report):  # no presigned URL: it would put a signature in Prefect's database
            parts += [f"**Results page:** `{report}` (open it from a copy: `aws s3 sync "
                      f"{report.rsplit('/', 1)[0]} report/`)", ""]
        else:
            parts += [f"**Results page:** [{report}]({pathlib.Path(os.path.abspath(report)).as_uri()})", ""]
    if errors:
        parts += [f"## {len(errors)} failed", "", "| input | reason |", "|---|---|"]
        parts += [f"| {e.get('uri') or e.get('source_uri')} | {str(e.get('error')).replace('|', '/')} |"
                  for e in errors[:200]]
        if len(errors) > 200:
            parts.append(f"| ... | {len(errors) - 200} more in the manifest |")
    if thumbnails:
        parts += ["", "## Examples (input | output)", ""]
        for name, before, after in thumbnails:
            b = base64.b64encode(before).decode()
            a = base64.b64encode(after).decode()
            parts.append(f"**{name}**  \n![in](data:image/jpeg;base64,{b}) ![out](data:image/jpeg;base64,{a})\n")
    if errors or thumbnails or report:
        create_markdown_artifact(markdown="\n".join(parts), key=f"{key}-details", description=title or key)
