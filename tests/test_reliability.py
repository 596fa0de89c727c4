"""Regression tests for the data-loss defects found by trying the pipeline as a hostile user
(issue 10), at the library level: fast, no Prefect or Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from rasr import catalog, storage
from rasr.restoration.worker import EnhanceWorker
from rasr.restoration.enhance_run import EnhanceConfig
from rasr.restoration.generators.bicubic import Bicubic
from rasr.locks import Lease, gallery_lock
from rasr.samples import as_rgb, load_photo


def test_config_hash_does_not_depend_on_how_the_db_is_spelled(tmp_path, monkeypatch):
    (tmp_path / "refs.lance").mkdir()
    os.symlink(tmp_path / "refs.lance", tmp_path / "link.lance")
    monkeypatch.chdir(tmp_path)
    spellings = ["refs.lance", "./refs.lance", "refs.lance/", str(tmp_path / "refs.lance"),
                 f"{tmp_path}//refs.lance", "link.lance", f"file://{tmp_path}/refs.lance"]
    assert len({EnhanceConfig(db=d).hash() for d in spellings}) == 1
    assert EnhanceConfig(db="s3://b/refs.lance").hash() == EnhanceConfig(db="s3://b//refs.lance/").hash()
    assert EnhanceConfig(db="refs.lance").hash() != EnhanceConfig(db="other.lance").hash()


# ---- shard leases: concurrent runs split the work -------------------------------------------------

def test_a_lease_has_one_holder_and_is_taken_over_only_when_abandoned(tmp_path):
    uri = str(tmp_path / "_leases" / "shard=a.json")
    first, second = Lease(uri, ttl=60, run_id="r1"), Lease(uri, ttl=60, run_id="r2")
    assert first.acquire() and not second.acquire()
    assert second.holder()["run_id"] == "r1"
    first.release()
    assert second.acquire() and not os.path.exists(str(tmp_path / "_leases" / "shard=b.json"))
    second.release()
    assert not os.path.exists(uri)

    # a holder whose process is gone (a killed run on this host) is taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = Lease(uri, ttl=3600, run_id="killed")
    assert orphan.acquire()
    open(uri, "w").write(open(uri).read().replace(str(os.getpid()), dead.stdout.strip()))
    assert Lease(uri, ttl=60, run_id="r3").acquire()
    # an expired lease of a live holder elsewhere is taken over too; a live one is not
    assert not Lease(uri, ttl=60).acquire()
    expired = Lease(str(tmp_path / "x.json"), ttl=-1)
    assert expired.acquire() and Lease(str(tmp_path / "x.json"), ttl=60).acquire()


def test_only_one_of_many_racing_runs_takes_over_an_abandoned_lease_locally(tmp_path):
    uri = str(tmp_path / "shard.json")
    for _ in range(10):
        Lease(uri, ttl=-1).acquire()  # an expired lease left behind
        winners = race([Lease(uri, ttl=60) for _ in range(8)])
        assert winners == 1
        os.unlink(uri)


def race(leases: list[Lease]) -> int:
    start = threading.Barrier(len(leases))
    won = []

    def go(lease):
        start.wait()
        if lease.acquire():
            won.append(lease)

    threads = [threading.Thread(target=go, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(won)


@pytest.fixture()
def bucket(s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    name = f"leases-{os.getpid()}-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    return name


def test_s3_leases_use_conditional_writes_against_a_real_s3_server(bucket):
    uri = f"s3://{bucket}/out/_leases/shard=a.json"
    for _ in range(5):
        assert Lease(uri, ttl=-1).acquire()  # expired: every waiter will try to take it over
        assert race([Lease(uri, ttl=60) for _ in range(6)]) == 1  # If-Match: exactly one wins
        storage.remove(uri)
    a, b = Lease(uri, ttl=60, run_id="a"), Lease(uri, ttl=60, run_id="b")
    assert a.acquire() and not b.acquire() and a.renew()
    a.release()
    assert b.acquire()


def test_two_s3_gallery_writers_never_hold_the_lock_at_once(bucket):
    db, inside, most = f"s3://{bucket}/refs.lance", [0], [0]
    guard = threading.Lock()

    def writer():
        with gallery_lock(db, "gallery", timeout=60, ttl=30):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.2)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


# ---- out of memory: the batch is halved ----------------------------------------------------------

class OomAboveOne(Bicubic):
    """Runs out of memory on any batch of more than one image."""

    def __init__(self, weights=None, device=None, dtype="fp32"):
        super().__init__(device=device)

    def restore(self, lr, ref, prompts=None):
        if lr.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().restore(lr, ref, prompts)


def test_out_of_memory_halves_the_batch_and_the_rows_say_so(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("chelsea", "coffee", "rocket", "astronaut")):
        Image.fromarray(as_rgb(load_photo(name))[:24, :32]).save(src / f"{i}.png")
    worker = EnhanceWorker(EnhanceConfig(generator=f"{__name__}:OomAboveOne", batch_size=4), io_threads=2)
    rows = worker.process(catalog.list_inputs(str(src)), str(tmp_path / "out"), "s", "r")
    worker.close()
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert all("out of memory in a batch of 4: retried in batches of 2 and 2" in r["notes"] for r in rows)
    assert all("batch of 2: retried in batches of 1 and 1" in r["notes"] for r in rows)
    plain = EnhanceWorker(EnhanceConfig(generator="bicubic", batch_size=4), io_threads=2)
    again = plain.process(catalog.list_inputs(str(src)), str(tmp_path / "plain"), "s", "r")
    plain.close()
    for a, b in zip(rows, again):
        assert np.array_equal(np.asarray(Image.open(a["output_uri"])), np.asarray(Image.open(b["output_uri"])))


def test_temporary_files_of_killed_writers_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = storage.temp_path(str(tmp_path / "x.png"))
    killed = live.replace(f"-{os.getpid()}-", f"-{dead.stdout.strip()}-")
    for path in (live, killed):
        open(path, "wb").close()
    assert storage.sweep_temp(str(tmp_path)) == 1
    assert os.path.exists(live) and not os.path.exists(killed)
