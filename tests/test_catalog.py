"""Listing, sharding, resume planning and output naming."""

import pytest

from rasr import catalog, storage
from rasr.catalog import Item


def items(n, prefix="a"):
    return [Item(f"/in/{prefix}{i:03d}.jpg", f"{prefix}{i:03d}.jpg", 100 + i, "t0") for i in range(n)]


def test_plan_is_deterministic_and_skips_covered_inputs():
    its = items(10)
    s1 = catalog.plan(its, {}, "cfg", 4)
    assert [len(s.items) for s in s1] == [4, 4, 2]
    assert [s.id for s in s1] == [s.id for s in catalog.plan(its, {}, "cfg", 4)]
    assert catalog.plan(its, {}, "other-config", 4)[0].id != s1[0].id
    done = {it.relpath: (it.size, it.mtime) for it in s1[0].items}
    s2 = catalog.plan(its, done, "cfg", 4)
    assert sum(len(s.items) for s in s2) == 6
    assert not {i.relpath for s in s2 for i in s.items} & set(done)


def test_changed_file_is_planned_again():
    its = items(3)
    done = {it.relpath: (it.size, it.mtime) for it in its}
    changed = [its[0], Item(its[1].uri, its[1].relpath, its[1].size, "t1"), its[2]]
    todo = catalog.plan(changed, done, "cfg", 10)
    assert [i.relpath for s in todo for i in s.items] == [its[1].relpath]


def test_covered_ignores_markers_of_other_configs():
    markers = [{"config_hash": "x", "items": [{"relpath": "a.jpg", "size": 1, "mtime": "t"}]},
               {"config_hash": "y", "items": [{"relpath": "b.jpg", "size": 1, "mtime": "t"}]}]
    assert catalog.covered(markers, "x") == {"a.jpg": (1, "t")}


@pytest.mark.parametrize("rel, expected", [
    ("cats/a.jpg", "images/cats/a.jpg.png"),
    ("a.png", "images/a.png"),
    ("../../etc/passwd", "images/__/__/etc/passwd.png"),
    ("/abs/x.jpg", "images/abs/x.jpg.png"),
    ("a\\..\\b.jpg", "images/a/__/b.jpg.png"),
])
def test_output_names_mirror_the_input_and_never_escape(rel, expected):
    assert catalog.output_uri("s3://bucket/out", rel, "png") == f"s3://bucket/out/{expected}"


def test_list_inputs_sorted_with_relpaths_and_hidden_files_ignored(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"1")
    (tmp_path / "a.png").write_bytes(b"22")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    got = catalog.list_inputs(str(tmp_path))
    assert [(i.relpath, i.size) for i in got] == [("a.png", 2), ("b/x.jpg", 1)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        catalog.list_inputs(str(tmp_path / "missing"))


def test_redact_removes_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sUp3rS3cret")
    assert "sUp3rS3cret" not in storage.redact("failed with key sUp3rS3cret")
    assert storage.redact("s3://user:pw@host/b") == "s3://user:***@host/b"
