"""`rasr ...` command lines: found in shell text (comments, YAML/JSON strings, markdown code blocks of infra/
and docs/deploy.md), and parsed with the real click CLI (callbacks never run)."""

from __future__ import annotations

import json
import re
import shlex

import click

from tests.infra.files import DOCS, ROOT, dockerfile_exec_form, infra_files, load_yaml, walk_strings

SHELL_OPS = {"&&", "||", ";", "|", "&", "(", ")", "$("}
REDIRECT = re.compile(r"^[<>&]+$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}?$")
IMAGE_REF = re.compile(r"(^|/)rasr:[^\s/]+$")
SUBCOMMAND_LIKE = re.compile(r"^-{0,2}[a-z][a-z0-9-]*$")
COMPOSE_RUN_VALUE_OPTS = {"-v", "--volume", "-e", "--env", "--entrypoint", "-w", "--workdir", "-u", "--user",
                          "--name", "-p", "--publish", "-l", "--label", "--cap-add", "--cap-drop"}


def logical_lines(text: str) -> list[str]:
    """Join backslash-continued lines."""
    lines, buf = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    if buf:
        lines.append(buf)
    return lines


def shell_commands(text: str):
    """Simple commands (word lists) of shell text; lines that are not valid shell (prose) are skipped."""
    for line in logical_lines(text):
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            words = list(lex)
        except ValueError:
            continue
        cmd: list[str] = []
        for w in [*words, ";"]:
            if w in SHELL_OPS:
                if cmd:
                    yield cmd
                cmd = []
            else:
                cmd.append(w)


def rasr_args(words: list[str]) -> list[str] | None:
    """The argument list of `rasr` if this command runs it (directly, or via the image or compose)."""
    while words and ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    args = None
    if words[0] == "rasr":
        args = words[1:]
    elif words[:2] == ["docker", "compose"] and "run" in words:
        rest = words[words.index("run") + 1:]
        i = 0
        while i < len(rest) and rest[i].startswith("-"):
            if rest[i] == "--entrypoint" or rest[i].startswith("--entrypoint="):
                return None  # runs something else in the image
            i += 2 if rest[i] in COMPOSE_RUN_VALUE_OPTS else 1
        if i < len(rest) and rest[i] == "rasr":
            args = rest[i + 1:] or ["--help"]  # the image's CMD
    elif words[:2] == ["docker", "run"]:
        images = [i for i, w in enumerate(words) if IMAGE_REF.search(w)]
        if images and not any(w.startswith("--entrypoint") for w in words[:images[0]]):
            args = words[images[0] + 1:] or ["--help"]
    if args is None:
        return None
    for i, w in enumerate(args):
        if REDIRECT.match(w):
            args = args[:i]
            break
    if not args or not SUBCOMMAND_LIKE.match(args[0]):
        return None  # prose such as "rasr image: ..."
    return args


def rasr_command_lines(text: str) -> list[list[str]]:
    return [a for cmd in shell_commands(text) if (a := rasr_args(cmd)) is not None]


def comment_text(text: str) -> str:
    """The comments of a #-commented file, one per line, with the '#' removed."""
    return "\n".join(line.strip()[1:] if line.strip().startswith("#") else "" for line in text.splitlines())


def markdown_code(text: str) -> str:
    """The contents of the fenced code blocks of a markdown file."""
    return "\n".join(re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE))


def sources_of_commands() -> list[tuple[str, list[str]]]:
    """(where, args) for every rasr command line in infra/ and docs/deploy.md."""
    found = []
    for path in infra_files():
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for args in rasr_command_lines(comment_text(text)):
            found.append((f"{where} (comment)", args))
        if path.suffix in (".yaml", ".yml", ".json"):
            doc = json.loads(text) if path.suffix == ".json" else load_yaml(path)
            for s in walk_strings(doc):
                for args in rasr_command_lines(s):
                    found.append((where, args))
    entry, cmd = dockerfile_exec_form("ENTRYPOINT"), dockerfile_exec_form("CMD")
    found.append(("infra/Dockerfile ENTRYPOINT+CMD", [*entry[1:], *(cmd or [])]))
    for args in rasr_command_lines(markdown_code(DOCS.read_text())):
        found.append(("docs/deploy.md", args))
    return found


def _sample_value(param: click.Parameter, token: str) -> str:
    """A value of the right type for an env-var placeholder (`$X`, `${X}`) given to a typed option."""
    t = param.type
    if isinstance(t, click.Choice):
        return str(t.choices[0])
    if isinstance(t, (click.types.IntParamType, click.types.IntRange)):
        return "1"
    if isinstance(t, (click.types.FloatParamType, click.types.FloatRange)):
        return "1.0"
    if isinstance(t, click.types.BoolParamType):
        return "true"
    return token


def _fill_placeholders(command: click.Command, args: list[str]) -> list[str]:
    options = {name: p for p in command.params if isinstance(p, click.Option) for name in p.opts}
    out = list(args)
    for i, tok in enumerate(out):
        name, eq, value = tok.partition("=")
        p = options.get(name)
        if p is None or p.is_flag:
            continue
        if eq and PLACEHOLDER.match(value):
            out[i] = f"{name}={_sample_value(p, value)}"
        elif not eq and i + 1 < len(out) and PLACEHOLDER.match(out[i + 1]):
            out[i + 1] = _sample_value(p, out[i + 1])
    return out


def parse_cli(args: list[str]) -> click.Context | None:
    """Parse like `rasr ARGS` down the subcommand chain (callbacks never run); None after --help.

    Unknown commands or options, missing arguments and bad values raise click.UsageError."""
    from flows.cli import main

    command: click.Command = main
    name, parent, rest = "rasr", None, list(args)
    try:
        while True:
            ctx = command.make_context(name, _fill_placeholders(command, rest), parent=parent)
            if not isinstance(command, click.Group):
                return ctx
            protected = getattr(ctx, "_protected_args", None)
            if protected is None:
                protected = ctx.protected_args
            sub, command, rest = command.resolve_command(ctx, [*protected, *ctx.args])
            name, parent = sub, ctx
    except click.exceptions.Exit as e:
        if e.exit_code == 0:
            return None  # --help
        raise
