"""Listing, sharding, resume planning and output naming."""

import os

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
    done = {it.relpath: [{"size": it.size, "mtime": it.mtime}] for it in s1[0].items}
    s2 = catalog.plan(its, done, "cfg", 4)
    assert sum(len(s.items) for s in s2) == 6
    assert not {i.relpath for s in s2 for i in s.items} & set(done)


def test_changed_file_is_planned_again():
    its = items(3)
    done = {it.relpath: [{"size": it.size, "mtime": it.mtime}] for it in its}
    changed = [its[0], Item(its[1].uri, its[1].relpath, its[1].size, "t1"), its[2]]
    todo = catalog.plan(changed, done, "cfg", 10)
    assert [i.relpath for s in todo for i in s.items] == [its[1].relpath]


def test_covered_ignores_markers_of_other_configs():
    markers = [{"config_hash": "x", "items": [{"relpath": "a.jpg", "size": 1, "mtime": "t"}]},
               {"config_hash": "y", "items": [{"relpath": "b.jpg", "size": 1, "mtime": "t"}]}]
    assert catalog.covered(markers, "x") == {"a.jpg": [{"size": 1, "mtime": "t", "sha256": None}]}


def test_every_finished_version_counts_whatever_the_marker_order():
    """An input edited and redone has two markers; it is done whichever is read last (the order of a listing
    is not the order of the runs)."""
    old = {"config_hash": "x", "items": [{"relpath": "a.jpg", "size": 1, "mtime": "t0"}]}
    new = {"config_hash": "x", "items": [{"relpath": "a.jpg", "size": 2, "mtime": "t1"}]}
    now = [Item("/in/a.jpg", "a.jpg", 2, "t1")]
    for markers in ([old, new], [new, old]):
        assert catalog.plan(now, catalog.covered(markers, "x"), "x", 10) == []


def test_failures_that_can_pass_are_retried_and_verdicts_kept():
    m = {"config_hash": "x", "items": [
        {"relpath": "io.jpg", "size": 1, "mtime": "t", "status": "error", "retry": True},
        {"relpath": "bad.jpg", "size": 1, "mtime": "t", "status": "error"},
        {"relpath": "ok.jpg", "size": 1, "mtime": "t", "status": "ok"}]}
    now = [Item(f"/in/{n}", n, 1, "t") for n in ("io.jpg", "bad.jpg", "ok.jpg")]
    todo = lambda **kw: [i.relpath for s in catalog.plan(now, catalog.covered([m], "x", **kw), "x", 10)
                         for i in s.items]
    assert todo() == ["io.jpg"]
    assert todo(retry_failed=True) == ["io.jpg", "bad.jpg"]
    redone = {"config_hash": "x", "items": [{"relpath": "io.jpg", "size": 1, "mtime": "t", "status": "ok"}]}
    assert catalog.plan(now, catalog.covered([m, redone], "x"), "x", 10) == []


def test_identical_bytes_with_a_new_mtime_are_not_redone(tmp_path):
    import hashlib

    (tmp_path / "a.jpg").write_bytes(b"same")
    (tmp_path / "b.jpg").write_bytes(b"diff")
    sha = hashlib.sha256(b"same").hexdigest()
    m = {"config_hash": "x", "items": [{"relpath": n, "size": 4, "mtime": "old", "sha256": sha} for n in ("a.jpg", "b.jpg")]}
    now = [Item(str(tmp_path / n), n, 4, "new") for n in ("a.jpg", "b.jpg")]
    done = catalog.same_bytes(now, catalog.covered([m], "x"))
    assert [i.relpath for s in catalog.plan(now, done, "x", 10) for i in s.items] == ["b.jpg"]


@pytest.mark.parametrize("rel, expected", [
    ("cats/a.jpg", "images/cats/a.jpg.png"),
    ("a.png", "images/a.png.png"),            # the extension is always appended: a.png and a can never meet
    ("../../etc/passwd", "images/__/__/etc/passwd.png"),
    ("/abs/x.jpg", "images/abs/x.jpg.png"),
])
def test_output_names_mirror_the_input_and_never_escape(rel, expected):
    assert catalog.output_uri("s3://bucket/out", rel, "png") == f"s3://bucket/out/{expected}"


# Names a hostile (or merely large) archive holds: each pair collided or failed before.
TRICKY = ["a.jpg", "a.jpg.png", "a", "a.png", "A.jpg", "a.JPG", "Cats/a.jpg", "cats/a.jpg", "cats/A.jpg",
          "caf\u00e9.jpg", "cafe\u0301.jpg", "CAF\u00c9.jpg", "x~0123456789abcdef.jpg", "X.jpg", "x.jpg",
          "a\\b.jpg", "a/b.jpg", "stra\u00dfe.jpg", "strasse.jpg", "-dash.jpg", "sp ace.jpg", "new\nline.jpg",
          "\u65e5\u672c.jpg", "e" * 250 + ".jpg", "e" * 250 + ".JPG", "E" * 250 + ".jpg", "\u00e9" * 126 + ".jpg",
          "d" * 300 + "/x.jpg", "d" * 300 + "/X.jpg", "D" * 300 + "/x.jpg"]


def test_output_names_are_injective_even_on_case_insensitive_stores(tmp_path):
    """No two inputs share an output, with names compared as a case- and Unicode-form-insensitive
    store compares them; every name component fits in 255 bytes; nothing escapes images/."""
    import unicodedata

    outs = [catalog.output_uri(str(tmp_path), rel, "png") for rel in TRICKY]
    folded = {unicodedata.normalize("NFC", o).casefold() for o in outs}
    assert len(folded) == len(TRICKY)
    root = str(tmp_path / "images") + "/"
    for o in outs:
        assert o.startswith(root)
        assert all(len(part.encode()) <= 255 for part in o[len(root):].split("/"))
    assert catalog.output_uri("out", "a.jpg", "png") == os.path.abspath("out/images/a.jpg.png")  # absolute


def test_the_same_input_always_gets_the_same_name():
    assert catalog.output_uri("s3://b/o", "IMG_1.JPG", "png") == catalog.output_uri("s3://b/o", "IMG_1.JPG", "png")
    assert catalog.output_uri("s3://b/o", "IMG_1.JPG", "png").startswith("s3://b/o/images/IMG_1.JPG~")


def test_long_names_write_and_leave_no_temporary_file(tmp_path):
    """A 250-byte name fits; its temporary file must too (the suffix used to push it past 255)."""
    uri = catalog.output_uri(str(tmp_path), "e" * 250 + ".jpg", "png")
    storage.write_bytes(uri, b"x")
    assert open(uri, "rb").read() == b"x"
    assert os.listdir(os.path.dirname(uri)) == [os.path.basename(uri)]


def test_list_inputs_accounts_for_hidden_files_and_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"1")
    (tmp_path / "a.png").write_bytes(b"22")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "..x.jpg").write_bytes(b"junk")
    (tmp_path / ".dir").mkdir()
    (tmp_path / ".dir" / "y.jpg").write_bytes(b"333")
    (tmp_path / ".dir" / "z.jpg").write_bytes(b"4444")
    got = catalog.list_inputs(str(tmp_path))
    assert [(i.relpath, i.size, i.status) for i in got] == [
        ("..x.jpg", 4, "skipped"), (".DS_Store", 4, "skipped"), (".dir", 7, "skipped"), ("a.png", 2, ""), ("b/x.jpg", 1, "")]
    assert "hidden folder with 2 files" in got[2].reason and "hidden" in got[0].reason
    assert [i.is_image for i in got] == [False, False, False, True, True]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        catalog.list_inputs(str(tmp_path / "missing"))


def test_symlinks_are_never_followed_out_of_the_tree_or_into_a_loop(tmp_path):
    src, outside = tmp_path / "in", tmp_path / "outside"
    src.mkdir(), outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"s")
    (src / "ok.jpg").write_bytes(b"1")
    os.symlink(src / "ok.jpg", src / "inner.jpg")            # to a file inside: an input like any other
    os.symlink(outside / "secret.jpg", src / "out.jpg")       # to a file outside: skipped unless asked
    os.symlink(outside, src / "outdir")                       # to a folder outside: skipped unless asked
    os.symlink(src, src / "self")                             # to its own folder: not listed twice
    os.symlink(src / "loop2", src / "loop1")
    os.symlink(src / "loop1", src / "loop2")
    os.symlink(tmp_path / "gone.jpg", src / "dangling.jpg")
    got = {i.relpath: i for i in catalog.list_inputs(str(src))}
    assert {r: i.status for r, i in got.items()} == {
        "dangling.jpg": "error", "inner.jpg": "", "loop1": "error", "loop2": "error", "ok.jpg": "",
        "out.jpg": "skipped", "outdir": "skipped", "self": "skipped"}
    assert "symlink loop" in got["loop1"].reason and "dangling" in got["dangling.jpg"].reason
    assert "--follow-symlinks" in got["out.jpg"].reason
    followed = {i.relpath: i.status for i in catalog.list_inputs(str(src), follow_symlinks=True)}
    assert followed["out.jpg"] == "" and followed["outdir/secret.jpg"] == ""


@pytest.mark.parametrize("rel, category", [("animals/cat.jpg", "animals"), ("a/b/c.png", "a"), ("top.jpg", "")])
def test_category_is_the_first_folder(rel, category):
    assert catalog.category_of(rel) == category


def test_write_parquet_takes_rows_or_a_table_and_leaves_no_temporary_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field("a", pa.int32()), pa.field("b", pa.string())])
    storage.write_parquet(str(tmp_path / "rows.parquet"), [{"a": 1, "b": "x"}], schema, compression="zstd")
    storage.write_parquet(str(tmp_path / "table.parquet"), pa.table({"a": [2]}))
    assert pq.read_table(tmp_path / "rows.parquet").schema == schema
    assert pq.read_table(tmp_path / "table.parquet").to_pylist() == [{"a": 2}]
    assert sorted(os.listdir(tmp_path)) == ["rows.parquet", "table.parquet"]
