"""Retrieval encoder names, importable without torch (the CLI builds its choices from them)."""

ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "dinov2", "clip", "vgg16")
# chosen by bench/retrieval_quality.py: +15 points top-1 on degraded photos over lite0 with centre crops,
# 1.4x the time per query embedding (README, "Retrieval quality")
DEFAULT_ENCODER = "efficientnet-lite1"
# the rows of the evaluation's Table 5 (retrieval encoders; "random" is added as the floor)
TABLE5_ENCODERS = ("vgg16", "clip", "dinov2", "efficientnet-lite0", "efficientnet-lite1")
