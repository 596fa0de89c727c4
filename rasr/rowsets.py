"""Sets of immutable Parquet files sorted by one key column: read by key a row group at a time, merged by size.

The run state (rasr/runstate.py) and the results page's row index (rasr/results/results_page.py) keep what an archive has
done this way, so a night's reads follow the night's keys, not the archive:

- a file is written once, sorted by its key (`relpath`), in row groups of ROW_GROUP rows; a reader asking for a
  set of keys reads each file's footer and only the row groups whose [min, max] key range holds one of them
  (on S3: ranged GETs, one per footer and one per row group read; never the whole object);
- more than MAX_FILES files are merged size-tiered: the smallest files together, never the whole set at once, so
  a row is rewritten about log(archive / night) times in its life, not once per merge (`merge_choice`).
"""

from __future__ import annotations

import bisect

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rasr import storage

ROW_GROUP = 32_768
MAX_FILES = 8


def write(uri: str, table: pa.Table, key: str, tmp_dir: str | None) -> None:
    """`table` sorted by `key` as one Parquet object (whole-object write: no partial file under its name)."""
    storage.write_parquet(uri, table.sort_by(key), tmp_dir=tmp_dir, compression="zstd", row_group_size=ROW_GROUP)


def _open(fs, path: str, size: int | None, remote: bool):
    """A file pyarrow reads by ranges: local files directly, remote objects with no read-ahead (each read one
    ranged GET; the size from the listing spares a HEAD)."""
    if not remote:
        return pq.ParquetFile(path)
    return pq.ParquetFile(fs.open(path, "rb", cache_type="none", size=size), pre_buffer=True)


def lookup(fs, files: list[tuple[str, int | None]], keys: set[str], key: str, remote: bool,
           schema: pa.Schema) -> pa.Table:
    """The rows of `files` ([(path, size)]) whose `key` is in `keys`, reading only the row groups that can hold
    one (their min/max statistics)."""
    if not keys or not files:
        return schema.empty_table()
    wanted = sorted(keys)
    values = pa.array(wanted, pa.string())
    kept = []
    for path, size in files:
        pf = _open(fs, path, size, remote)
        col = pf.schema_arrow.get_field_index(key)
        groups = []
        for g in range(pf.metadata.num_row_groups):
            st = pf.metadata.row_group(g).column(col).statistics
            if st is not None and st.has_min_max:
                i = bisect.bisect_left(wanted, st.min)
                if i == len(wanted) or wanted[i] > st.max:
                    continue  # no wanted key inside this group's range
            groups.append(g)
        if groups:
            t = pf.read_row_groups(groups)
            t = t.filter(pc.is_in(t.column(key), value_set=values))
            if t.num_rows:
                kept.append(t.cast(schema))
    return pa.concat_tables(kept) if kept else schema.empty_table()


def read_all(fs, files: list[tuple[str, int | None]], remote: bool, schema: pa.Schema) -> pa.Table:
    tables = [_open(fs, p, s, remote).read().cast(schema) for p, s in files]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def merge_choice(sizes: list[int], max_files: int = MAX_FILES) -> list[int]:
    """Which files to merge (indices into `sizes`, their bytes): none while there are at most `max_files`;
    otherwise the smallest two, and each next-smallest file while it is no larger than all taken so far: files of
    a similar size go together, and a big old file waits until the small ones have grown to its size."""
    if len(sizes) <= max_files:
        return []
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    take, total = order[:2], sizes[order[0]] + sizes[order[1]]
    for i in order[2:]:
        if sizes[i] > total:
            break
        take.append(i)
        total += sizes[i]
    return take
