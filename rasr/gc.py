"""Stale outputs: rows and images of inputs that no longer exist, and leftovers of crashed writes.

The manifest answers "what is the current output of each input"; an input deleted after its run
would otherwise keep its `ok` row and its image for ever. `find_stale` lists them (the nightly flow
reports the count); `collect` removes them: manifest rows first (so a crash in between leaves an
orphan image, never a row pointing at nothing), then the images, then the inputs' entries in the
run state (rasr/runstate.py). Temporary files older than an hour (a write killed mid-way) are removed too, looked
for where writes are staged (not in the image tree).
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rasr import catalog, manifest, runstate, storage
from rasr.results import results_page

TEMP_MAX_AGE_S = 3600.0


@dataclass
class Stale:
    """What `collect` would remove."""

    rows: list[dict] = field(default_factory=list)    # every manifest row of a vanished input
    sources: list[str] = field(default_factory=list)  # the vanished inputs (source_uri)
    temp_files: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        return sorted({r["output_uri"] for r in self.rows if r.get("output_uri")})


def find_stale(output: str, input: str | None = None) -> Stale:
    """Rows whose input is gone. With `input`, one listing decides; else each source is checked."""
    table = manifest.read_manifest(output, latest=False)
    rows = table.select(["source_uri", "relpath", "output_uri", "shard_id", "status"]).to_pylist()
    sources = sorted({r["source_uri"] for r in rows})
    if input is not None:
        listed = {i.uri for i in catalog.list_inputs(input)}
        gone = {s for s in sources if s not in listed}
    else:
        with ThreadPoolExecutor(16) as pool:
            alive = dict(zip(sources, pool.map(_source_exists, sources)))
        gone = {s for s, ok in alive.items() if not ok}
    return Stale(rows=[r for r in rows if r["source_uri"] in gone], sources=sorted(gone),
                 temp_files=_old_temp_files(output))


def _source_exists(uri: str) -> bool:
    if storage.is_remote(uri):
        return storage.exists(uri)
    return os.path.lexists(uri)  # a dangling symlink is still an input (recorded as an error)


def _old_temp_files(output: str) -> list[str]:
    if storage.is_remote(output) or not os.path.isdir(output):
        return []  # object stores write whole objects: nothing half-written to collect
    # where writes are staged (catalog.temp_dir: every image, thumbnail, manifest and marker write), and the small
    # folders whose writers may stage next to the file; never a walk of the images or thumbnails (the archive's size)
    big = {os.path.join(output, catalog.IMAGES_DIR), os.path.join(output, results_page.REPORT_DIR, "thumbs")}
    found = []
    for dirpath, dirnames, _ in os.walk(output):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in big]
        found += storage.stale_temp_files(dirpath, TEMP_MAX_AGE_S)
    return found


def collect(output: str, stale: Stale) -> dict:
    """Remove what `stale` lists; returns counts. Safe to run again after a crash."""
    gone = set(stale.sources)
    shards = sorted({r["shard_id"] for r in stale.rows})
    for sid in shards:  # 1. rows
        uri = manifest.shard_table_uri(output, catalog.MANIFEST_DIR, sid)
        table = manifest.read_table(output, catalog.MANIFEST_DIR, manifest.SCHEMA, shard_ids=[sid])
        keep = [r for r in table.to_pylist() if r["source_uri"] not in gone]
        if keep:
            manifest.write_rows(uri, keep)
        else:
            storage.remove(uri)
    removed = 0
    for out_uri in stale.outputs:  # 2. images
        if storage.exists(out_uri):
            storage.remove(out_uri)
            removed += 1
    relpaths = defaultdict(set)  # 3. run-state entries (a re-created input is then enhanced again)
    for r in stale.rows:
        relpaths[r["shard_id"]].add(r["relpath"])
    if relpaths:
        runstate.rewrite(output, dict(relpaths))
    for path in stale.temp_files:
        storage.remove(path)
    page = False
    if stale.rows and storage.exists(storage.join(output, results_page.REPORT_DIR, "index.html")):
        results_page.write_report(output)  # 4. the results page anew (nights only append to it)
        page = True
    return {"inputs": len(gone), "rows": len(stale.rows), "images": removed, "temp_files": len(stale.temp_files),
            "page_rewritten": page}


def apply_or_count(output: str, stale: Stale, apply: bool) -> dict:
    """What `stale` holds, and with `apply` what `collect` removed: the summary of `rasr gc` and of the weekly
    collect-stale flow."""
    summary = {"vanished_inputs": len(stale.sources), "rows": len(stale.rows), "images": len(stale.outputs),
               "temp_files": len(stale.temp_files), "applied": apply}
    if apply:
        summary.update({f"removed_{k}": v for k, v in collect(output, stale).items()})
    return summary
