"""The LanceDB gallery: exact search equals brute force, exclusion, filters, upserts, ANN above the threshold."""

import numpy as np
import pytest

from rasr import gallery as G


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
        order = np.argsort(-(vecs @ q[qi]))[:7]
        assert [h.id for h in hs] == [f"img{j}" for j in order]
        np.testing.assert_allclose([h.similarity for h in hs], (vecs @ q[qi])[order], atol=1e-5)


def test_own_image_is_excluded_and_category_filter_applies(small):
    g, vecs, _ = small
    hits = g.search(vecs[3:4], k=3, exclude_ids=["img3"])[0]
    assert "img3" not in [h.id for h in hits] and len(hits) == 3
    assert g.search(vecs[3:4], k=1)[0][0].id == "img3"
    assert {h.category for h in g.search(vecs[:2], k=10, category="a")[1]} == {"a"}


def test_upsert_replaces_by_uri_and_delete(small):
    g, vecs, rng = small
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
    assert info["index"] == "IVF_HNSW_SQ"
    q = vecs[:40] + 0.05 * unit(rng, 40, 32)
    hits = g.search(q, k=5, exclude_ids=[None] * 40)
    exact = np.argsort(-(q @ vecs.T), axis=1)[:, :5]
    recall = np.mean([len({h.id for h in hs} & {f"img{j}" for j in ex}) / 5 for hs, ex in zip(hits, exact)])
    assert recall > 0.9, recall
    assert hits[0][0].id == "img0"
