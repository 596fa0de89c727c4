"""Benchmarks that no other test runs, in their smoke modes: a schema or API change fails here instead of
rotting in bench/. Here: bench/encoding.py --smoke, bench/train_gpu.py --tiny, bench/pipeline_gpu.py (its
refusal without CUDA), bench/instance_refs.py --smoke, bench/scale.py --smoke, bench/retrieval.py --smoke,
bench/pipeline.py --smoke (its per-worker section), bench/eval_bundled.py --smoke, bench/eval_scale.py --smoke,
bench/retrieval_quality.py --smoke (on the bundled photos: the Debian sets need not be installed). Elsewhere:
bench/color_fix.py (test_faithful), bench/colour.py (test_derivatives), bench/reproduce_osediff.py (test_reproduce),
bench/refdsr_gpu.py (test_refdsr). bench/photosets.py is a module of retrieval_quality (its Debian reader runs only
where the sets are installed)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # importable by name, as a bench's own `__name__:Class` specs expect
    spec.loader.exec_module(mod)
    return mod


def test_encoding_bench_smoke():
    result = bench("encoding").main(["--smoke"])
    # which encodings give back every pixel, decoded by Pillow: the lossless ones, and only those
    assert set(result["lossless"]) == {"png level=0", "png level=1", "png level=3", "png level=6", "png level=9",
                                       "webp lossless", "tiff deflate"}
    assert result["png1_ms"] > 0 and result["png1_over_png6_size"] > 0.5


def test_listing_bench_smoke():
    result = bench("listing").main(["--smoke"])
    # the handed plan is the flow's own (the bench asserts the same shards) and costs one listing, one state read
    assert result["listings"] == {"before": 2, "after": 1}
    assert result["run_state_reads"] == {"before": 2, "after": 1}
    assert (result["inputs"], result["new"]) == (300, 20)


@pytest.mark.usefixtures("one_torch_thread")
def test_train_bench_runs_its_tiny_cpu_path():
    result = bench("train_gpu").main(["--tiny", "--steps", "1", "--batch", "2"])
    assert result["device"] == "cpu (tiny)" and result["trainable"] > 0 and math.isfinite(result["loss"])


def test_pipeline_gpu_bench_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench("pipeline_gpu").main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.integration  # indexes a gallery and runs EnhanceWorker 4 times (~20 s)
def test_instance_refs_bench_smoke():
    """The same-scene transfer bench on the motorcycle pair, one warp and 3 negatives: its keys, and the verdicts
    that must hold at any size (no negative changed, the real pair gains)."""
    result = bench("instance_refs").main(["--smoke"])
    assert {"psnr_gain_realesrgan_real", "psnr_gain_bicubic_real", "psnr_gain_synthetic", "false_transfer_rate",
            "negatives", "time_ratio"} <= set(result)
    assert result["negatives"] == 3 and result["false_transfer_rate"] == 0.0
    assert result["psnr_gain_bicubic_real"] > 0.5 and result["psnr_gain_synthetic"] > 1.0


@pytest.mark.integration  # 8 planning processes (~6 s)
def test_scale_bench_smoke(flows_env):
    """bench/scale.py --smoke: an archive built by the project's writers, then a whole night (the command, in this
    process) that enhances exactly its new photos."""
    result = bench("scale").main(["--smoke"])
    assert result["archives"] == [300] and result["new"] == 6 and result["night_time_ratio"] == 1.0
    (night,) = result["nights"]
    assert night["seconds"] > 0 and night["peak_rss_mb"] > 50


@pytest.mark.integration  # builds a 5k exact and a 10k ANN table (~25 s)
def test_retrieval_bench_smoke():
    """bench/retrieval.py --smoke (it rotted once on a schema change): the keys the docs quote, an ANN index that
    finds the exact neighbours of clustered data, the category filter honoured."""
    result = bench("retrieval").main(["--smoke"])
    for key in ("exact_qps_100k", "torch_qps_100k", "exact_ratio_100k", "ann_recall5_1m", "crossover_rows",
                "ann_min_rows", "exact_fp32_qps_5k", "exact_bf16_qps_5k"):
        assert key in result, key
    assert result["ann_recall5_10k"] >= 0.95 and result["ann_cat_ok"]


@pytest.mark.integration  # indexes the bundled gallery and runs the worker twice on 8 images (~16 s)
def test_pipeline_bench_smoke():
    """bench/pipeline.py --smoke: its per-worker section (the worker driven as its actor is, serial and pipelined)
    runs and reports efficiencies that are fractions; the realesrgan and `rasr enhance` sections are not run here."""
    result = bench("pipeline").main(["--smoke"])
    assert result["images_per_worker"] == 8
    assert 0 < result["serial_efficiency_30ms"] <= 1 and 0 < result["efficiency_30ms"] <= 1


@pytest.mark.integration
def test_eval_bundled_bench_smoke(flows_env, tmp_path):
    """bench/eval_bundled.py --smoke: both protocols through the evaluate flow, a Table 1 each with both methods."""
    result = bench("eval_bundled").main([str(tmp_path), "--smoke"])
    assert set(result) == {"degraded", "clean"}
    for res in result.values():
        assert "bicubic" in res["table1"] and "realesrgan" in res["table1"] and "PSNR" in res["table1"]


@pytest.mark.integration
def test_eval_scale_bench_smoke(flows_env, tmp_path):
    """bench/eval_scale.py --smoke: its `rasr evaluate` command and its rows-per-(image, method) check."""
    result = bench("eval_scale").main(["--smoke", "--out", str(tmp_path)])
    assert result == {"rows": 8, "images": 4, "per_pair_min": 1, "per_pair_max": 1}


def test_retrieval_quality_bench_smoke():
    """bench/retrieval_quality.py --smoke (the Debian photo sets are not needed): the summary keys the README quotes,
    accuracies that are fractions."""
    result = bench("retrieval_quality").main(["--smoke"])
    assert {"top1_default", "top1_old_default", "top1_baseline_histogram", "top1_majority"} <= set(result)
    assert all(0 <= result[k] <= 1 for k in ("top1_default", "top1_old_default", "top1_majority"))
