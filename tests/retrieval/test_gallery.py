"""The LanceDB gallery: exact search equals brute force, exclusion, filters, upserts, ANN above the threshold."""

import os
import numpy as np
import pytest

from rasr.retrieval import gallery as G
from rasr.retrieval.exact_search import as_set


def unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(vecs, cats=None, prefix="img"):
    return [{"id": f"{prefix}{i}", "uri": f"/g/{prefix}{i}.jpg", "relpath": f"{prefix}{i}.jpg",
             "category": (cats[i] if cats else "c"), "width": 8, "height": 8, "size": 10, "mtime": "t",
             "encoder": "test", "vector": v} for i, v in enumerate(vecs)]


@pytest.fixture()
def small(tmp_path):
    rng = np.random.default_rng(0)
    vecs = unit(rng, 50, 16)
    g = G.Gallery.create_or_open(str(tmp_path / "db"), "g", "test", 16)
    g.upsert(rows(vecs, cats=["a" if i % 2 else "b" for i in range(50)]))
    return g, vecs, rng


def test_exact_search_matches_brute_force(small):
    g, vecs, rng = small
    q = unit(rng, 5, 16)
    hits = g.search(q, k=7)
    for qi, hs in enumerate(hits):
        ref_ids, ref_sims = flat_reference(g, q[qi], 7)
        assert [h.id for h in hs] == ref_ids
        np.testing.assert_allclose([h.similarity for h in hs], ref_sims, atol=1e-5)


def test_own_image_is_excluded_and_category_filter_applies(small):
    g, vecs, _ = small
    hits = g.search(vecs[3:4], k=3, exclude_ids=["img3"])[0]
    assert "img3" not in [h.id for h in hits] and len(hits) == 3
    assert g.search(vecs[3:4], k=1)[0][0].id == "img3"
    assert {h.category for h in g.search(vecs[:2], k=10, category="a")[1]} == {"a"}


def test_upsert_replaces_by_uri_and_delete(small):
    g, _, rng = small
    new = rows(unit(rng, 1, 16), prefix="img")  # same uri /g/img0.jpg, new vector and id
    new[0]["id"] = "changed"
    g.upsert(new)
    assert g.count() == 50 and g.files()["/g/img0.jpg"][0] == "changed"
    g.delete_uris(["/g/img1.jpg", "/g/img2.jpg"])
    assert g.count() == 48 and "/g/img1.jpg" not in g.files()


def test_open_resolves_the_table_and_explains_choices(tmp_path):
    db = str(tmp_path / "db")
    with pytest.raises(G.GalleryError, match="rasr index"):
        G.Gallery.open(db)
    G.Gallery.create_or_open(db, "g", "enc-a", 4)
    assert G.Gallery.open(db).name == "g__enc_a"
    G.Gallery.create_or_open(db, "g", "enc-b", 4)
    with pytest.raises(G.GalleryError, match="pass --table"):
        G.Gallery.open(db)
    assert G.Gallery.open(db, "g__enc_b").encoder == "enc-b"
    with pytest.raises(G.GalleryError, match="4-d"):
        G.Gallery.open(db, "g__enc_b").search(np.ones((1, 3), np.float32))


def test_ann_index_above_threshold_keeps_recall(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "ANN_MIN_ROWS", 500)
    rng = np.random.default_rng(1)
    vecs = unit(rng, 2000, 32)
    g = G.Gallery.create_or_open(str(tmp_path / "db"), "g", "test", 32)
    g.upsert(rows(vecs))
    info = g.maintain()
    assert info["index"] == G.ANN_INDEX
    q = vecs[:40] + 0.05 * unit(rng, 40, 32)
    hits = g.search(q, k=5, exclude_ids=[None] * 40)
    exact = [flat_reference(g, qi, 5)[0] for qi in q]  # LanceDB's exhaustive search, index bypassed
    recall = np.mean([len({h.id for h in hs} & set(ex)) / 5 for hs, ex in zip(hits, exact)])
    assert recall > 0.9, recall
    assert hits[0][0].id == "img0"


# ---- against an independent reference: LanceDB's own exhaustive (unindexed) search on the same table ----
def flat_reference(g, q, k, exclude=(), category=None):
    """LanceDB flat search with the same filters as a where clause: exhaustive, exact cosine."""
    conds = []
    if category is not None:
        conds.append(f"category = '{category}'")
    if exclude:
        conds.append("id NOT IN (" + ", ".join(f"'{i}'" for i in exclude) + ")")
    query = g.table.search(q).distance_type("cosine").bypass_vector_index().limit(k).select(["id", "_distance"])
    if conds:
        query = query.where(" AND ".join(conds), prefilter=True)
    t = query.to_arrow()
    return t.column("id").to_pylist(), 1.0 - t.column("_distance").to_numpy()


@pytest.fixture()
def mixed(tmp_path):
    """300 rows in categories a/b/c plus a 'rare' one with 3 rows, so k can exceed the matching rows."""
    rng = np.random.default_rng(2)
    vecs = unit(rng, 303, 24)
    cats = [("a", "b", "c")[i % 3] for i in range(300)] + ["rare"] * 3
    g = G.Gallery.create_or_open(str(tmp_path / "db"), "g", "test", 24)
    g.upsert(rows(vecs, cats=cats))
    return g, vecs, rng


def assert_same_hits(a, b):
    """Same ids, uris and categories in the same order; similarities equal up to float32 rounding
    (a batched matmul and a single-query one sum in different orders)."""
    assert [[(h.id, h.uri, h.category) for h in hs] for hs in a] == [[(h.id, h.uri, h.category) for h in hs] for hs in b]
    np.testing.assert_allclose([h.similarity for hs in a for h in hs], [h.similarity for hs in b for h in hs], atol=1e-6)


def check_against_reference(g, q, k, excl, cats):
    hits = g.search(q, k=k, exclude_ids=excl, category=cats)
    assert len(hits) == len(q)
    for qi, hs in enumerate(hits):
        ref_ids, ref_sims = flat_reference(g, q[qi], k, sorted(as_set(excl[qi])), cats[qi])
        assert [h.id for h in hs] == ref_ids, qi
        np.testing.assert_allclose([h.similarity for h in hs], ref_sims, atol=1e-5)
        assert all(h.category == cats[qi] for h in hs) if cats[qi] else True
        assert [h.similarity for h in hs] == sorted((h.similarity for h in hs), reverse=True)
    return hits


def test_batch_with_per_query_categories_and_exclusions_matches_lancedb_flat_search(mixed):
    g, vecs, rng = mixed
    q = np.concatenate([vecs[[0, 1, 2, 300]], unit(rng, 8, 24)])  # four are stored rows: exclude their ids
    cats = [None, "b", "a", "rare", "a", None, "c", "rare", "missing", "b", None, "a"]
    excl = ["img0", {"img1", "img4"}, None, {"img300", "img301"}, None, {"img5"}, set(), None, None, None, None, None]
    hits = check_against_reference(g, q, 7, excl, cats)
    assert [h.id for h in hits[3]] == ["img302"]  # 'rare' has 3 rows, 2 excluded: fewer than k come back
    assert len(hits[7]) == 3 and hits[8] == []  # k > matching rows; an unknown category matches nothing
    assert "img0" not in [h.id for h in hits[0]] and g.search(vecs[:1], k=1)[0][0].id == "img0"


def test_batch_equals_one_call_per_query_and_k_beyond_the_table(mixed):
    g, _, rng = mixed
    q = unit(rng, 20, 24)
    cats = [(None, "a", "b", "rare")[i % 4] for i in range(20)]
    excl = [{f"img{i}"} for i in range(20)]
    batch = g.search(q, k=5, exclude_ids=excl, category=cats)
    assert_same_hits(batch, [g.search(q[i:i + 1], k=5, exclude_ids=[excl[i]], category=cats[i])[0] for i in range(20)])
    check_against_reference(g, q[:3], 400, [None] * 3, [None] * 3)  # k > rows: every row, best first
    assert len(g.search(q[:1], k=400)[0]) == 303 and g.search(q[:2], k=0) == [[], []]


def test_an_id_stored_under_two_uris_is_excluded_everywhere(tmp_path):
    rng = np.random.default_rng(3)
    vecs = unit(rng, 10, 8)
    rs = rows(vecs)
    rs.append({**rs[0], "uri": "/g/copy-of-img0.jpg"})  # same bytes (id), second location
    g = G.Gallery.create_or_open(str(tmp_path / "db"), "g", "test", 8)
    g.upsert(rs)
    assert [h.id for h in g.search(vecs[:1], k=2)[0]] == ["img0", "img0"]
    assert "img0" not in [h.id for h in g.search(vecs[:1], k=10, exclude_ids=["img0"])[0]]


def test_no_storage_call_per_query_and_writes_invalidate(mixed, monkeypatch):
    g, _, rng = mixed
    q = unit(rng, 4, 24)
    first = g.search(q, k=3)
    table, g._table, g._db = g._table, None, None  # any storage access from here on raises
    assert g.search(q, k=3, category="a") and g.search(q, k=3) == first and g.count() == 303
    g._table, g._db = table, G.connect(g.db_uri)
    new = rows(unit(rng, 1, 24), prefix="new")
    new[0]["vector"] = q[0]
    g.upsert(new)
    assert g.count() == 304 and g.search(q[:1], k=1)[0][0].id == "new0"
    g.delete_uris(["/g/new0.jpg"])
    assert g.count() == 303 and g.search(q[:1], k=1)[0][0].id != "new0"


def test_search_explains_bad_batch_arguments(mixed):
    g, vecs, _ = mixed
    with pytest.raises(G.GalleryError, match="one entry per query"):
        g.search(vecs[:3], category=["a", "b"])
    with pytest.raises(G.GalleryError, match="per query"):
        g.search(vecs[:3], exclude_ids=[None])


def test_ann_batch_with_categories_and_exclusions(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "ANN_MIN_ROWS", 500)
    monkeypatch.setattr(G, "ANN_ROWS_PER_PARTITION", 100)  # 15 partitions, 1 probed: a rare category still fills
    monkeypatch.setattr(G, "ANN_NPROBES", 1)
    rng = np.random.default_rng(4)
    vecs = unit(rng, 1500, 16)
    g = G.Gallery.create_or_open(str(tmp_path / "db"), "g", "test", 16)
    g.upsert(rows(vecs, cats=["rare" if i % 500 == 7 else "a" if i % 2 else "b" for i in range(1500)]))
    n = 12
    q, cats, excl = vecs[:n] + 0.02 * unit(rng, n, 16), [(None, "a", "b", "rare")[i % 4] for i in range(n)], \
        [{f"img{i}"} if i % 2 else None for i in range(n)]
    exact = g.search(q, k=5, exclude_ids=excl, category=cats)  # no index yet: the exact path
    check_against_reference(g, q, 5, excl, cats)
    assert g.maintain()["index"] == G.ANN_INDEX and g._use_ann(g.count())
    ann = g.search(q, k=5, exclude_ids=excl, category=cats)
    assert_same_hits(ann, [g.search(q[i:i + 1], k=5, exclude_ids=[excl[i]], category=cats[i])[0] for i in range(n)])
    for qi, (a, e) in enumerate(zip(ann, exact)):
        assert all(h.id not in as_set(excl[qi]) and (cats[qi] is None or h.category == cats[qi]) for h in a)
        assert len(a) == len(e) and len({h.id for h in a} & {h.id for h in e}) >= len(e) - 1 and a[0].id == e[0].id
        np.testing.assert_allclose([h.similarity for h in a], [float(vecs[int(h.id[3:])] @ q[qi] /
                                   np.linalg.norm(q[qi])) for h in a], atol=1e-5)  # refined: exact similarity


def test_ann_searches_again_without_a_probe_cap_when_too_few_rows_come_back(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "ANN_MIN_ROWS", 500)
    rng = np.random.default_rng(5)
    vecs = unit(rng, 600, 8)
    g = G.Gallery.create_or_open(str(tmp_path / "db"), "g", "test", 8)
    g.upsert(rows(vecs, cats=["a" if i % 3 else "b" for i in range(600)]))
    g.maintain()
    real, calls = g._ann_query, []

    def capped_finds_little(vecs, limit, cat, max_probes):  # as if the probed partitions held 1 row of `cat`
        calls.append(max_probes)
        return [f[:1] if max_probes else f for f in real(vecs, limit, cat, max_probes)]
    monkeypatch.setattr(g, "_ann_query", capped_finds_little)
    hits = g.search(vecs[:4], k=3, category="b", exclude_ids=[{"img0"}, None, None, None])
    assert calls == [G.ANN_NPROBES, 0] and all(len(hs) == 3 for hs in hits)
    assert "img0" not in [h.id for h in hits[0]] and all(h.category == "b" for hs in hits for h in hs)


def test_new_tables_record_how_they_were_embedded_and_old_tables_still_work(tmp_path):
    import lancedb
    import pyarrow as pa

    from rasr.retrieval.encoder_names import DEFAULT_ENCODER
    from rasr.retrieval.gallery import GALLERY_PREPROCESSING, GALLERY_VIEWS, schema

    db = str(tmp_path / "refs.lance")
    g = G.Gallery.create_or_open(db, "gallery", DEFAULT_ENCODER, 4)
    assert (g.preprocessing, g.views) == (GALLERY_PREPROCESSING, GALLERY_VIEWS) == ("letterbox", "clean+realesrgan-x4")
    assert g.upgrade_hint is None
    # today's preprocessing with the old default encoder: the hint names the better encoder
    lite0 = G.Gallery.create_or_open(db, "lite0", "efficientnet-lite0", 4)
    assert f"--encoder {DEFAULT_ENCODER}" in lite0.upgrade_hint
    assert G.Gallery.create_or_open(db, "dino", "dinov2", 4).upgrade_hint is None  # chosen on purpose

    new = schema(4, "efficientnet-lite0")  # a table written before preprocessing was recorded
    old_meta = {k: v for k, v in new.metadata.items() if k in (b"rasr.encoder", b"rasr.dim", b"rasr.encoder_weights")}
    lancedb.connect(db).create_table("old__efficientnet_lite0", schema=pa.schema(list(new), metadata=old_meta))
    old = G.Gallery.open(db, "old__efficientnet_lite0")

    class Probe:
        preprocessing = "letterbox"

    probe = Probe()
    old.configure(probe)
    assert probe.preprocessing == "crop"  # queries prepared as that table's vectors were
    assert "re-index" in old.upgrade_hint and "crop" in old.upgrade_hint


def test_degraded_views_pool_into_the_gallery_vector(photos):
    """A gallery vector made from the clean and the degraded view lies between the two."""
    from rasr.retrieval.encoders import load_encoder
    from rasr.retrieval.embedding import degraded_copy, embed_views

    enc = load_encoder("efficientnet-lite0", device="cpu")
    enc.preprocessing = "letterbox"
    rgb = photos["chelsea"]
    view = degraded_copy(rgb, 7)
    from rasr.retrieval.embedding import VIEW_SIDE

    assert max(view.shape[:2]) == VIEW_SIDE // 4  # scaled to VIEW_SIDE, then x4 down
    assert np.array_equal(view, degraded_copy(rgb, 7))  # seeded: the same file always gives the same view
    pooled = embed_views(enc, [rgb], [7], "clean+realesrgan-x4")[0]
    clean, degraded = enc.encode([rgb])[0], enc.encode([view])[0]
    assert abs(np.linalg.norm(pooled) - 1) < 1e-5
    assert pooled @ clean > clean @ degraded and pooled @ degraded > clean @ degraded
    assert np.allclose(pooled, (clean + degraded) / np.linalg.norm(clean + degraded), atol=1e-5)


def test_reindexing_without_an_encoder_keeps_the_tables_own(tmp_path):
    """`rasr index` with no --encoder writes the encoder table a gallery already has (an old
    efficientnet-lite0 table keeps working), and today's default for a new gallery."""
    db = str(tmp_path / "refs.lance")
    assert G.table_encoder(db) is None  # no DB yet: nothing is created by asking
    assert not os.path.exists(db)
    G.Gallery.create_or_open(db, "gallery", "efficientnet-lite0", 4)
    assert G.table_encoder(db) == "efficientnet-lite0"
    assert G.table_encoder(db, "other") is None
    G.Gallery.create_or_open(db, "gallery", "dinov2", 4)
    assert G.table_encoder(db) is None  # two candidates: the caller decides (--encoder)


def test_bf16_ranking_with_float32_rerank_returns_lancedb_flat_search_hits(tmp_path):
    """Above ExactIndex.LOW_PRECISION_MIN_ROWS the matrix is ranked in bf16 and re-ranked in float32. On clustered
    vectors (near ties, where bf16 alone reorders neighbours) the hits and similarities are LanceDB's own flat
    search's, with exclusions and a category filter."""
    from rasr.retrieval.exact_search import ExactIndex

    rng = np.random.default_rng(7)
    n, d = ExactIndex.LOW_PRECISION_MIN_ROWS + 4000, 32
    centres = unit(rng, 300, d)
    vecs = centres[rng.integers(0, 300, n)] + 0.05 * rng.normal(size=(n, d)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    g = G.Gallery.create_or_open(str(tmp_path / "db"), "g", "test", d)
    g.upsert(rows(vecs, cats=["a" if i % 5 else "b" for i in range(n)]))
    q = vecs[rng.integers(0, n, 12)] + 0.02 * rng.normal(size=(12, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    import torch

    bf16 = torch.topk(torch.from_numpy(q).bfloat16() @ torch.from_numpy(vecs).bfloat16().T, 10).indices.numpy()
    fp32 = np.argsort(-(q @ vecs.T), axis=1, kind="stable")[:, :10]
    assert (bf16 != fp32).any()  # bf16 alone would reorder or miss neighbours here: the re-rank is needed
    hits = g.search(q, k=10, exclude_ids=[["img5"]] * 12)
    assert g._exact.low_precision is not None and g._exact._low_mat is not None  # the bf16 path ran
    for qi, hs in enumerate(hits):
        ref_ids, ref_sims = flat_reference(g, q[qi], 10, exclude=("img5",))
        assert [h.id for h in hs] == ref_ids
        np.testing.assert_allclose([h.similarity for h in hs], ref_sims, atol=1e-5)
    # a category slice of more than the threshold too (a: 4/5 of the rows)
    for qi, hs in enumerate(g.search(q[:3], k=5, category="a")):
        assert [h.id for h in hs] == flat_reference(g, q[qi], 5, category="a")[0]
