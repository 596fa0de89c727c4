"""Index + enhance entirely on s3:// URIs against a real S3-compatible server (moto, server mode)."""

import logging
import os

import boto3
import pytest

from flows.enhance import enhance_archive
from flows.index import index_gallery
from rasr.retrieval.index_run import IndexConfig
from rasr import storage
from rasr.retrieval.gallery import Gallery
from rasr.manifest import read_manifest
from tests.conftest import S3_KEY_ID, S3_SECRET
from rasr.restoration.enhance_run import EnhanceConfig


@pytest.fixture()
def bucket(s3_server, sample_dirs, small_gallery):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="photos")  # no region: see STACK-NOTES
    for kind, root in (("gallery", small_gallery), ("archive", sample_dirs["archive"])):
        for dirpath, _, files in os.walk(root):
            for f in files:
                path = os.path.join(dirpath, f)
                s3.upload_file(path, "photos", f"{kind}/{os.path.relpath(path, root)}")
    yield s3
    for obj in s3.list_objects_v2(Bucket="photos").get("Contents", []):
        s3.delete_object(Bucket="photos", Key=obj["Key"])
    s3.delete_bucket(Bucket="photos")


def test_index_and_enhance_on_s3(flows_env, bucket, caplog, capfd):
    caplog.set_level(logging.INFO)  # botocore DEBUG logs print request headers by design
    idx = index_gallery("s3://photos/gallery", IndexConfig(db="s3://photos/db"))
    assert idx["embedded"] == 4 and idx["failed"] == 0
    g = Gallery.open("s3://photos/db")
    assert g.count() == 4 and all(u.startswith("s3://photos/gallery/") for u in g.files())

    cfg = EnhanceConfig(db="s3://photos/db", generator="bicubic", shard_size=4)
    s = enhance_archive("s3://photos/archive", "s3://photos/out", cfg)
    assert s["ok"] == 6 and s["failed"] == 0 and s["shards"] == 2
    rows = read_manifest("s3://photos/out").to_pylist()
    assert len(rows) == 6
    for r in rows:
        assert r["output_uri"].startswith("s3://photos/out/images/") and storage.exists(r["output_uri"])
        assert r["ref_uris"][0].startswith("s3://photos/gallery/")
    assert enhance_archive("s3://photos/archive", "s3://photos/out", cfg)["processed"] == 0

    # credentials never appear in anything we wrote or logged
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="photos", Prefix="out/")["Contents"]]
    keys += [o["Key"] for o in bucket.list_objects_v2(Bucket="photos", Prefix="db/")["Contents"]]
    for key in keys:
        body = bucket.get_object(Bucket="photos", Key=key)["Body"].read()
        assert S3_SECRET.encode() not in body and S3_KEY_ID.encode() not in body, key
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, str(s), str(idx)):
        assert S3_SECRET not in text and S3_KEY_ID not in text
