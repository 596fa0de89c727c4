"""Every `rasr ...` command line in infra/ and docs/deploy.md parses with the real CLI, and asks only for
resources the clusters advertise; the finder and parser themselves catch mistakes."""

from __future__ import annotations

import shlex

import click
import pytest

from tests.infra.commands import parse_cli, rasr_command_lines, sources_of_commands
from tests.infra.files import CLUSTER, RAYCLUSTER, group_custom_resources, load_yaml


def test_command_finder_and_parser_catch_mistakes():
    assert rasr_command_lines("rasr index g --db d.lance && echo ok") == [["index", "g", "--db", "d.lance"]]
    assert rasr_command_lines("docker compose -f infra/compose.yaml run --rm -v /a:/b rasr sample demo") == [
        ["sample", "demo"]]
    assert rasr_command_lines("docker compose run --rm --entrypoint prefect rasr deploy --all") == []
    assert rasr_command_lines("docker run --rm --gpus all rasr:0.1.0 search x.jpg --db d") == [
        ["search", "x.jpg", "--db", "d"]]
    assert rasr_command_lines("kubectl create namespace rasr") == []
    assert rasr_command_lines("rasr --help > /dev/null") == [["--help"]]
    assert parse_cli(["enhance", "in", "out", "--workers", "$N", "--generator", "${GEN}"]).params["workers"] == 1
    assert parse_cli(["dataset", "build", "src", "out", "--top-k", "3"]).params["top_k"] == 3
    assert parse_cli(["--help"]) is None
    for bad in (["enhance", "in", "out", "--no-such-option"], ["enhanse", "in", "out"], ["index", "g"],
                ["enhance", "in", "out", "--workers", "four"], ["dataset"], ["dataset", "biuld", "a", "b"]):
        with pytest.raises(click.UsageError):
            parse_cli(bad)


def test_every_rasr_command_line_parses_with_the_real_cli():
    found = sources_of_commands()
    wheres = {w for w, _ in found}
    # the files that must show rasr commands do
    assert "docs/deploy.md" in wheres and "infra/kuberay/rayjob.yaml" in wheres and "infra/ray/cluster.yaml" in wheres
    subcommands = {a[0] for w, a in found if w == "docs/deploy.md"}
    assert {"index", "enhance"} <= subcommands, subcommands
    errors = []
    for where, args in found:
        try:
            parse_cli(args)
        except click.ClickException as e:
            errors.append(f"{where}: rasr {shlex.join(args)}\n    -> {e.format_message()}")
    assert not errors, "rasr command lines that the CLI rejects:\n" + "\n".join(errors)


def test_worker_resources_in_commands_name_resources_the_clusters_advertise():
    advertised = set()
    for t in load_yaml(CLUSTER)["available_node_types"].values():
        advertised |= set(t.get("resources", {}))
    for group in load_yaml(RAYCLUSTER)["spec"]["workerGroupSpecs"]:
        advertised |= set(group_custom_resources(group))
    used = 0
    for where, args in sources_of_commands():
        ctx = parse_cli(args)
        spec = ctx.params.get("worker_resources") if ctx is not None else None
        if spec:
            used += 1
            missing = set(spec) - advertised  # the CLI parses the JSON into {resource: amount}
            assert not missing, f"{where}: --worker-resources asks for {missing}, no node type has it"
    assert used, "no command shows how to pin actors with --worker-resources"
