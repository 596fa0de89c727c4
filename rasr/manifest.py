"""The per-image manifest: one Parquet row per input, one file per shard, fixed schema."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from rasr import storage
from rasr.catalog import MANIFEST_DIR

STATUSES = ("ok", "error", "skipped")
TIMING_FIELDS = ("read", "decode", "embed", "retrieve", "restore", "encode", "write", "total")

SCHEMA = pa.schema([
    pa.field("source_uri", pa.string()),
    pa.field("relpath", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("status", pa.string()),             # ok | error | skipped
    pa.field("error", pa.string()),              # reason when status != ok
    pa.field("ref_ids", pa.list_(pa.string())),  # top-k retrieved references (sha256), best first
    pa.field("ref_uris", pa.list_(pa.string())),
    pa.field("ref_similarities", pa.list_(pa.float32())),
    pa.field("ref_categories", pa.list_(pa.string())),
    pa.field("ref_used", pa.bool_()),            # pixels came from a reference (the generator's or a transfer)
    pa.field("ref_match", pa.string()),           # same_scene (verified, transferred) | semantic | none (retrieved none)
    pa.field("ref_inliers", pa.int32()),          # geometric verification: most inliers among the candidates
    pa.field("ref_coverage", pa.float32()),       # fraction of the output whose detail came from the same-scene ref
    pa.field("ref_matched_id", pa.string()),      # the same-scene reference (any of the top-k), when one verified
    pa.field("generator", pa.string()),
    pa.field("weights_id", pa.string()),
    pa.field("weights_files", pa.string()),       # JSON {file: sha256} of the weight files loaded (diffusion)
    pa.field("encoder", pa.string()),
    pa.field("gallery_table", pa.string()),       # the LanceDB table references came from ...
    pa.field("gallery_version", pa.int64()),      # ... and its version (a re-index makes a new one)
    pa.field("config_hash", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("tagger", pa.string()),
    pa.field("fusion_scale", pa.float32()),
    pa.field("timings_ms", pa.struct([pa.field(n, pa.float32()) for n in TIMING_FIELDS])),
    pa.field("output_uri", pa.string()),
    pa.field("output_encoding", pa.string()),     # how the output was written, e.g. "png level=1"
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("out_width", pa.int32()),
    pa.field("out_height", pa.int32()),
    pa.field("source_mode", pa.string()),        # PIL mode of the input file (RGB, CMYK, I;16, ...)
    pa.field("alpha", pa.bool_()),               # the input had an alpha channel, kept in the output
    pa.field("frames", pa.int32()),              # frames in the input (animated GIF/WebP): the first is enhanced
    pa.field("color", pa.string()),               # the output's colour: profile kept, converted to sRGB, untagged
    pa.field("bit_depth", pa.int32()),            # bits per channel of the output file (8 or 16)
    pa.field("carried", pa.string()),             # what the output carries: icc exif xmp iptc provenance c2pa
    pa.field("notes", pa.string()),              # what was done that is worth knowing (OOM retry, first frame...)
    pa.field("shard_id", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("worker", pa.string()),              # host:pid of the model worker that produced the row
    pa.field("processed_at", pa.timestamp("us", tz="UTC")),
])


def empty_row() -> dict:
    """A row with every field present (None/empty), to be filled in."""
    row = {f.name: None for f in SCHEMA}
    row.update(ref_ids=[], ref_uris=[], ref_similarities=[], ref_categories=[], ref_used=False, alpha=False,
               timings_ms={n: 0.0 for n in TIMING_FIELDS})
    return row


def write_rows(uri: str, rows: list[dict], schema: pa.Schema = SCHEMA, tmp_dir: str | None = None) -> None:
    """Write rows as one Parquet file (whole-object write: no partial files under the final name)."""
    storage.write_parquet(uri, rows, schema, tmp_dir, compression="zstd")


def shard_table_uri(out: str, name: str, shard_id: str) -> str:
    """<out>/<name>/shard=<id>/part-0.parquet"""
    return storage.join(out, name, f"shard={shard_id}", "part-0.parquet")


def read_table(out: str, name: str, schema: pa.Schema, shard_ids: list[str] | None = None) -> pa.Table:
    """Every shard file of table `name` under <out> (e.g. manifest), concatenated; or only those of
    `shard_ids` (a run's own shards: no need to read the whole archive's manifest)."""
    fs, base = storage.filesystem(storage.join(out, name))
    if not fs.exists(base):
        return schema.empty_table()
    if shard_ids is None:
        files = sorted(p for p in fs.find(base) if p.endswith(".parquet"))
    else:
        files = [path for sid in shard_ids
                 if fs.exists(path := storage.filesystem(shard_table_uri(out, name, sid))[1])]
    if not files:
        return schema.empty_table()
    if storage.is_remote(out):
        blobs = fs.cat(files)  # fetched concurrently
        tables = [pq.read_table(io.BytesIO(blobs[p]), schema=schema) for p in files]
    else:
        tables = [pq.read_table(p, schema=schema) for p in files]
    return pa.concat_tables(tables)


def read_manifest(out: str, latest: bool = True) -> pa.Table:
    """All manifest rows under <out>/manifest; latest=True keeps the newest row per source_uri."""
    table = read_table(out, MANIFEST_DIR, SCHEMA)
    if not latest or table.num_rows == 0:
        return table
    df = table.to_pandas()
    df = df.sort_values("processed_at").drop_duplicates("source_uri", keep="last").sort_values("relpath")
    return pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False)
