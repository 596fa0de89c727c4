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


def config_options(*classes, skip: tuple[str, ...] = ()):
    """A decorator adding one click option per command-line field of `classes`, in declaration order;
    the command receives them as keyword arguments named like the fields (`options.build` makes the
    dataclass back from them)."""
    def decorate(f):
        for cls in reversed(classes):
            hints = typing.get_type_hints(cls)
            for fld in reversed(options.cli_fields(cls)):
                if fld.name not in skip:
                    f = _click_option(fld, hints[fld.name])(f)
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


def _click_option(fld: dataclasses.Field, hint):
    m = fld.metadata
    flags = m["flags"] or (f"--{fld.name.replace('_', '-')}",)
    default = fld.default_factory() if fld.default is dataclasses.MISSING else fld.default
    kind = _base(hint)
    kw = {"help": m["help"], "envvar": m["envvar"], "metavar": m["metavar"]}
    if kind is bool:
        if default:  # on by default: --name/--no-name
            flags = tuple(f"{f}/--no-{f[2:]}" for f in flags if f.startswith("--"))
            return click.option(*flags, fld.name, default=True, show_default=True, **kw)
        return click.option(*flags, fld.name, is_flag=True, default=False, **kw)
    choices = options.choices_of(fld)
    if choices is not None:
        kind = (OpenChoice if m["open"] else click.Choice)(list(choices))
    elif m["parse"]:
        parse = m["parse"]

        def convert(ctx, param, value, parse=parse):
            try:
                return parse(value) if isinstance(value, str) else value
            except ValueError as e:
                raise click.BadParameter(str(e)) from None
        kw["callback"] = convert
        kind, default = str, None
    return click.option(*flags, fld.name, type=kind, default=default, show_default=default not in (None, "", {}),
                        **kw)


def fail(e: Exception) -> None:
    """One line on stderr and exit 1: any failure of a run."""
    from rasr.storage import redact

    click.echo(f"error: {redact(str(e))}", err=True)
    sys.exit(1)


def must_exist(uri: str, what: str) -> None:
    """Usage error (exit 2) at once, before Prefect or Ray start, when an input location is missing."""
    from rasr import storage

    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise click.UsageError(f"{what} {storage.redact(uri)} does not exist: check the path or prefix")


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
