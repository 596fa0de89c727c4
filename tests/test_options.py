"""One declaration per option: the CLI's options, the flows' parameters and the checks all come from
the Config dataclasses (rasr/options.py)."""

import dataclasses
import inspect
import os

import click
import pytest
from click.testing import CliRunner

from flows.cli import main
from rasr import options
from rasr.research.dataset import DatasetConfig
from rasr.restoration.enhance_run import EnhanceConfig
from rasr.research.evaluation import EvalConfig
from rasr.restoration.generators import GENERATORS, GeneratorOptions
from rasr.retrieval.index_run import IndexConfig
from rasr.research.metrics import ScoreConfig
from rasr.retrieval.search import SearchConfig
from rasr.research.train import TrainConfig
from tasks.cluster import Cluster, TrainScaling

COMMANDS = {("enhance",): (EnhanceConfig, GeneratorOptions, Cluster), ("index",): (IndexConfig, Cluster),
            ("search",): (SearchConfig, Cluster), ("dataset", "build"): (DatasetConfig, Cluster),
            ("evaluate",): (EvalConfig, GeneratorOptions, Cluster), ("metrics",): (ScoreConfig,),
            ("train",): (TrainConfig, TrainScaling)}


def command(path: tuple[str, ...]) -> click.Command:
    cmd = main
    for name in path:
        cmd = cmd.get_command(None, name)
    return cmd


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_config_field_is_an_option_with_its_default_and_help(path):
    params = {p.name: p for p in command(path).params}
    for cls in COMMANDS[path]:
        for f in options.cli_fields(cls):
            assert f.name in params, f"{' '.join(path)} lacks the option of {cls.__name__}.{f.name}"
            p = params[f.name]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if isinstance(default, list):  # comma-separated on the command line
                assert p.default == ",".join(default) and p.callback(None, p, p.default) == default
            elif isinstance(default, dict):  # JSON or repeated KEY=VALUE: parsed by the option's callback
                assert p.callback is not None
            elif p.required:  # no default on the command line: it must be given
                assert f.name in cls.CLI_REQUIRED
            else:
                assert p.default == default, f"{f.name}: {p.default!r} != {default!r}"
            assert p.help == f.metadata["help"]
            if options.choices_of(f):
                assert list(p.type.choices) == list(options.choices_of(f))


def test_choices_come_from_the_registries():
    opt = {p.name: p for p in command(("enhance",)).params}
    assert list(opt["generator"].type.choices) == list(GENERATORS)
    assert opt["generator"].type.convert("mypkg.gen:Mine", None, None) == "mypkg.gen:Mine"  # a custom generator
    assert "--weights" in opt["generator_weights"].opts and "--generator-weights" in opt["generator_weights"].opts


def test_cli_values_build_the_same_config_a_flow_takes():
    ctx = command(("enhance",)).make_context("enhance", [
        "in", "out", "--top-k", "3", "--format", "jpg", "--precision", "bf16", "--tile-overlap", "16",
        "--fusion-scale", "0.7", "--worker-resources", '{"h100": 1}', "--shard-size", "8"])
    cfg = options.build(EnhanceConfig, ctx.params, generator_options=options.build(GeneratorOptions, ctx.params).as_dict())
    assert (cfg.top_k, cfg.output_format, cfg.dtype, cfg.overlap, cfg.shard_size) == (3, "jpg", "bf16", 16, 8)
    assert cfg.generator_options == {"fusion_scale": 0.7}  # unset generator options stay out (the hash)
    assert options.build(Cluster, ctx.params).worker_resources == {"h100": 1.0}


def test_run_options_do_not_change_what_a_run_produces():
    base = EnhanceConfig()
    assert EnhanceConfig(shard_size=3, follow_symlinks=True, batch_size=9).hash() == base.hash()
    assert EnhanceConfig(top_k=2).hash() != base.hash()
    ev = EvalConfig()
    assert EvalConfig(pairs_file="p.csv", lr_dir="lr/", baseline="realesrgan", examples=9, shard_size=1).hash() == ev.hash()
    assert EvalConfig(metrics=["psnr"]).hash() != ev.hash() and EvalConfig(pairs={"a.png": "r.png"}).hash() != ev.hash()


@pytest.mark.parametrize(("group", "configs"), [
    (options.RestorationOptions, (EnhanceConfig, EvalConfig)),
    (options.GalleryOptions, (EnhanceConfig, EvalConfig, IndexConfig, SearchConfig))], ids=["restoration", "gallery"])
def test_an_option_group_is_declared_once_and_shared(group, configs):
    """The configs take the group's own fields (one declaration: default, help, bounds), and the commands offer
    them with the same help."""
    declared = {f.name: f for f in dataclasses.fields(group)}
    helps = {}
    for cls in configs:
        assert issubclass(cls, group), cls.__name__
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in declared.items():
            if (cls, name) != (IndexConfig, "table"):  # an index run names the table it writes (default "gallery")
                assert fields[name] is f, f"{cls.__name__}.{name} is declared again"
    for path in (("enhance",), ("evaluate",), ("index",), ("search",)):
        shared = {f.name for f in dataclasses.fields(COMMANDS[path][0]) if declared.get(f.name) is f}
        for p in command(path).params:
            if p.name in shared:
                helps.setdefault(p.name, set()).add(p.help)
    assert helps and all(len(h) == 1 for h in helps.values()), helps


def test_one_identity_for_every_job_names_the_gallery_once(tmp_path, monkeypatch):
    """However --db is spelled, the same DB gives the same config hash (enhance and evaluation alike)."""
    db = tmp_path / "refs.lance"
    db.mkdir()
    (tmp_path / "link").symlink_to(db)
    monkeypatch.chdir(tmp_path)
    spellings = [str(db), "refs.lance", "./refs.lance/", "link"]
    assert all(os.path.samefile(s, db) for s in spellings)  # the file system's word, not rasr's
    for cls in (EnhanceConfig, EvalConfig):
        assert len({cls(db=s).hash() for s in spellings}) == 1, cls.__name__
        assert cls(db=str(tmp_path / "other.lance")).hash() != cls(db=str(db)).hash()
    assert all(issubclass(c, options.Identity) for c in (EnhanceConfig, EvalConfig, DatasetConfig))


@pytest.mark.parametrize("cmd", ["index", "search"])
def test_index_and_search_take_db_as_a_config_option_that_is_required(cmd, tmp_path):
    r = CliRunner().invoke(main, [cmd, str(tmp_path)])
    assert r.exit_code == 2 and "Missing option '--db'" in r.output
    ctx = command((cmd,)).make_context(cmd, [str(tmp_path), "--db", "refs.lance"])
    assert options.build(COMMANDS[(cmd,)][0], ctx.params).db == "refs.lance"


def test_repeated_key_value_and_csv_options():
    ctx = command(("evaluate",)).make_context("evaluate", [
        "hr", "out", "--methods", "bicubic, realesrgan", "--weights", "realesrgan=/w/x4.pth", "--method-weights",
        "refdsr=/w/sd", "--metrics", "psnr,ssim", "--crop-border", "4"])
    cfg = options.build(EvalConfig, ctx.params)
    assert cfg.methods == ["bicubic", "realesrgan"] and cfg.metrics == ["psnr", "ssim"] and cfg.crop_border == 4
    assert cfg.weights == {"realesrgan": "/w/x4.pth", "refdsr": "/w/sd"}
    with pytest.raises(click.BadParameter, match="expected KEY=VALUE"):
        command(("evaluate",)).make_context("evaluate", ["hr", "out", "--weights", "x4.pth"])


@pytest.mark.parametrize("cfg, message", [
    (EnhanceConfig(top_k=0), "--top-k must be >= 1, got 0"),
    (EnhanceConfig(png_level=10), "--png-level must be <= 9"),
    (EnhanceConfig(dtype="fp8"), "--precision 'fp8' is not one of fp32, fp16, bf16"),
    (EnhanceConfig(generator="mypkg.gen:Mine"), None),
    (IndexConfig(near_duplicate=1.5), "--near-duplicate must be <= 1"),
    (SearchConfig(k=0), "-k must be >= 1"),
    (Cluster(workers=0), "--workers must be >= 1"),
])
def test_checks_name_the_option(cfg, message):
    if message is None:
        options.check(cfg)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        options.check(cfg)


def test_flows_take_the_config_dataclasses():
    from flows.dataset import build_dataset
    from flows.enhance import enhance_archive
    from flows.evaluate import evaluate, score_folder
    from flows.index import index_gallery
    from flows.nightly import nightly_enhance
    from flows.search import search_batch
    from flows.train import train_refdsr

    for fl, cls in ((enhance_archive, EnhanceConfig), (nightly_enhance, EnhanceConfig), (index_gallery, IndexConfig),
                    (search_batch, SearchConfig), (build_dataset, DatasetConfig), (evaluate, EvalConfig),
                    (score_folder, ScoreConfig), (train_refdsr, TrainConfig)):
        params = inspect.signature(fl.fn).parameters
        assert params["config"].annotation in (f"{cls.__name__} | None", cls.__name__), fl.name
        # no option of the config is declared a second time as a flow parameter
        assert not {f.name for f in dataclasses.fields(cls)} & set(params), fl.name


def test_deployment_parameters_are_coerced_and_unknown_names_refused():
    from flows.enhance import enhance_archive

    ok = enhance_archive.validate_parameters({"input": "in", "output": "out",
                                              "config": {"generator": "bicubic", "top_k": 2},
                                              "cluster": {"workers": 2, "worker_resources": {"h100": 1}}})
    assert ok["config"] == EnhanceConfig(generator="bicubic", top_k=2)
    assert ok["cluster"] == Cluster(workers=2, worker_resources={"h100": 1})
    with pytest.raises(Exception, match="topk"):
        enhance_archive.validate_parameters({"input": "in", "output": "out", "config": {"topk": 2}})
