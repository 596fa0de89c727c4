"""What the command modules share: options built from the Config dataclasses (rasr/options.py), and
the way a command reports a failure or a summary."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing

import click

from rasr import options

EXIT_PARTIAL = 3


def config_options(*classes):
    """A decorator adding one click option per command-line field of `classes`, in declaration order;
    the command receives them as keyword arguments named like the fields (`options.build` makes the
    dataclass back from them)."""
    def decorate(f):
        for cls in reversed(classes):
            hints = typing.get_type_hints(cls)
            required = getattr(cls, "CLI_REQUIRED", ())
            for fld in reversed(options.cli_fields(cls)):
                f = _click_option(fld, hints[fld.name], fld.name in required)(f)
        return f
    return decorate


class OpenChoice(click.Choice):
    """The listed names, or `package.module:ClassName` of one's own class."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and ":" in value:
            return value
        return super().convert(value, param, ctx)


def _base(hint) -> type:
    """int | None -> int."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _click_option(fld: dataclasses.Field, hint, required: bool = False):
    """bool: --name/--no-name; list: comma-separated text; dict: JSON (`parse`) or repeated KEY=VALUE."""
    m = fld.metadata
    flags = m["flags"] or (f"--{fld.name.replace('_', '-')}",)
    default = fld.default_factory() if fld.default is dataclasses.MISSING else fld.default
    kind = typing.get_origin(_base(hint)) or _base(hint)
    kw = {"help": m["help"], "envvar": m["envvar"], "metavar": m["metavar"]}
    if required:
        kw["required"] = True
    if kind is bool:
        flags = tuple(f"{f}/--no-{f[2:]}" for f in flags if f.startswith("--"))
        return click.option(*flags, fld.name, default=default, show_default=True, **kw)
    choices = options.choices_of(fld)
    if choices is not None:
        kind = (OpenChoice if m["open"] else click.Choice)(list(choices))
    elif m["parse"]:
        kw["callback"] = _converter(m["parse"])
        kind, default = str, None
    elif kind is list:
        kw["callback"] = _converter(lambda text: [t.strip() for t in text.split(",") if t.strip()])
        kind, default = str, ",".join(default)
    elif kind is dict:
        kw["callback"] = _converter(_pairs, flags[0])
        return click.option(*flags, fld.name, multiple=True, **kw)
    if required:  # no default at all: click 8.3+ takes an explicit None for a given value
        return click.option(*flags, fld.name, type=kind, **kw)
    return click.option(*flags, fld.name, type=kind, default=default, show_default=default not in (None, "", {}),
                        **kw)


def _converter(parse, *args):
    def convert(ctx, param, value):
        try:
            return parse(value, *args) if isinstance(value, (str, tuple)) else value
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return convert


def _pairs(specs: tuple[str, ...], flag: str) -> dict[str, str]:
    """(KEY=VALUE, ...) of a repeated option -> {KEY: VALUE}."""
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {spec!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def run(step, *args, **kwargs):
    """`step(*args, **kwargs)` (a flow, or the work of a command); any failure of it: `fail`."""
    try:
        return step(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1
        fail(e)


def checked(check, *args):
    """`check(*args)`, the checks and plan a command makes before any engine starts: a ValueError of it
    (rasr.options.UsageError and the like) is a usage error (exit 2), any other failure `fail`s."""
    try:
        return check(*args)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - any failure: one line on stderr and exit 1
        fail(e)


def fail(e: Exception) -> None:
    """One line on stderr and exit 1: any failure of a run."""
    from rasr.storage import redact

    click.echo(f"error: {redact(str(e))}", err=True)
    sys.exit(1)


def must_exist(uri: str, what: str) -> None:
    """Usage error (exit 2) at once, before Prefect or Ray start, when an input location is missing."""
    try:
        options.require_exists(uri, what)
    except options.UsageError as e:
        raise click.UsageError(str(e)) from None


def print_summary(title: str, summary: dict, keys: list[str]) -> None:
    click.echo("")
    click.echo(title)
    width = max(len(k) for k in keys)
    for k in keys:
        if k in summary:
            click.echo(f"  {k.ljust(width)}  {summary[k]}")


def build(cls, values: dict, **overrides):
    """The dataclass from a command's option values; a bad value is a usage error naming the option."""
    try:
        cfg = options.build(cls, values, **overrides)
        options.check(cfg)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    return cfg
