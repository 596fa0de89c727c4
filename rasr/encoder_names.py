"""Retrieval encoder names, importable without torch (the CLI builds its choices from them)."""

ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "dinov2", "clip", "vgg16")
DEFAULT_ENCODER = "efficientnet-lite0"
