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
import typing
from typing import Any

# a deployment parameter with a typo must fail, not be dropped (pydantic validates Prefect's parameters)
STRICT = {"extra": "forbid"}


class UsageError(ValueError):
    """An argument that cannot work (the CLI exits 2); the message names it and the fix."""


def require_exists(uri: str, what: str) -> None:
    """A UsageError naming `what` when the location `uri` (folder, file or s3:// prefix) does not exist."""
    from rasr import storage

    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise UsageError(f"{what} {storage.redact(uri)} does not exist: check the path or prefix")


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
    """The fields of `cls` offered on the command line, in declaration order (not those in its CLI_HIDDEN)."""
    hidden = getattr(cls, "CLI_HIDDEN", ())
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False) and f.name not in hidden]


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


# ---------------------------------------------------------------------------------------------------
# Option groups: one declaration of an idea that several jobs take. A Config inherits the groups it uses
# (its own fields follow theirs); CLI_HIDDEN names the fields a command does not offer, CLI_REQUIRED those
# it must be given.

DEFAULT_MAX_PIXELS = 40_000_000  # input pixels; a x4 output of this is 640 MP (rasr.restoration.images uses it)
COLOR_FIXES = ("auto", "none", "adain", "wavelet")  # rasr.restoration.colorfix implements them


@dataclasses.dataclass
class GalleryOptions:
    """The gallery a job retrieves from (or, for an index run, writes): its LanceDB, table and encoder weights."""

    __pydantic_config__ = STRICT

    db: str | None = option(None, "Gallery LanceDB (folder or s3:// URI; `rasr index` writes one).")
    table: str | None = option(None, "Table or gallery name (needed when the DB holds several).")
    encoder_weights: str | None = option(None, "Encoder weights (folder, file, s3:// URI or Hugging Face id), if not "
                                               "the table's default source.")


@dataclasses.dataclass
class RestorationOptions:
    """How a generator runs: tiles, colour correction, precision, device, batch size, the largest input."""

    __pydantic_config__ = STRICT

    tile: int = option(256, "Tile size in input (LR) pixels (0 = never tile).", low=0)
    overlap: int = option(32, "Overlap of neighbouring tiles in input (LR) pixels.", flags=("--tile-overlap",), low=0)
    color_fix: str = option("auto", "Colour correction of the output towards the input (auto: AdaIN for osediff and "
                                    "refdsr as OSEDiff does, wavelet for realesrgan by measurement, none for bicubic).",
                            choices=COLOR_FIXES)
    dtype: str = option("fp32", "Model precision.", flags=("--precision",), choices=("fp32", "fp16", "bf16"))
    device: str | None = option(None, "Torch device (default: the worker's accelerator).", cli=False)
    batch_size: int = option(4, "Images per model call.", low=1)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Inputs above this many pixels fail with a reason.", low=1)


class Identity:
    """What a job's config hash is made of (`identity()`, `hash()`), one rule for every job: every field but
    NOT_HASHED (how the work is run or shown, never what it produces), without the HASHED_WHEN_SET fields left
    at their defaults (options added after runs existed: their hashes, and so their resume, hold), and with
    the gallery DB as one spelling (a relative path, a trailing slash or a symlink name the same DB: a rerun
    spelled differently redoes nothing). A job adds what only it decides in `refine`."""

    NOT_HASHED: typing.ClassVar[tuple[str, ...]] = ()
    HASHED_WHEN_SET: typing.ClassVar[dict[str, typing.Any]] = {}

    def identity(self) -> dict:
        from rasr import storage

        d = dataclasses.asdict(self)
        for k in self.NOT_HASHED:
            d.pop(k, None)
        for k, default in self.HASHED_WHEN_SET.items():
            if k in d and d[k] == default:
                d.pop(k)
        if d.get("db"):
            d["db"] = storage.redact(storage.normalise(d["db"]))
        return self.refine(d)

    def refine(self, d: dict) -> dict:
        return d

    def hash(self) -> str:
        from rasr import catalog

        return catalog.config_hash(self.identity())
