"""One declaration per option: a Config dataclass field carries its default, help and choices.

The flows take the dataclass; the command line builds its options from the same fields
(flows/cli.py `config_options`), so an option is added, renamed or documented in one place:

    @dataclass
    class IndexConfig:
        batch_size: int = option(32, "Images per encoder call.", low=1)

Metadata keys: help; flags (command-line names, default --field-name); choices (a tuple); open (a
choice may also be module:Class); low / high (inclusive bounds); envvar; metavar; parse (command-line
text -> value, for dict fields); cli (False: not a command-line option).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# a deployment parameter with a typo must fail, not be dropped (pydantic validates Prefect's parameters)
STRICT = {"extra": "forbid"}


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable | None = None,
           flags: tuple[str, ...] = (), choices: tuple | None = None, open: bool = False,
           low: float | None = None, high: float | None = None, envvar: str | None = None,
           metavar: str | None = None, parse: Callable[[str], Any] | None = None, cli: bool = True) -> Any:
    """A dataclass field with what the command line needs to offer it."""
    meta = {"help": help, "flags": tuple(flags), "choices": choices, "open": open, "low": low, "high": high,
            "envvar": envvar, "metavar": metavar, "parse": parse, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> tuple | None:
    c = f.metadata.get("choices")
    return tuple(c) if c is not None else None


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` offered on the command line, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def build(cls, values: dict, **overrides):
    """`cls` from the command line's values (keys of other configs are ignored), plus `overrides`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names}, **overrides)


def check(cfg) -> None:
    """Choices and bounds of every field, for configs built in code or from deployment parameters
    (the command line checks the same declarations itself); the message names the option."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = (f.metadata.get("flags") or (f"--{f.name.replace('_', '-')}",))[0]
        allowed = choices_of(f)
        if allowed is not None and value is not None and value not in allowed \
                and not (f.metadata.get("open") and ":" in str(value)):
            raise ValueError(f"{flag} {value!r} is not one of {', '.join(map(str, allowed))}")
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
            if low is not None and value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
            if high is not None and value > high:
                raise ValueError(f"{flag} must be <= {high}, got {value}")
