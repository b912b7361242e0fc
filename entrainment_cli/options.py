"""Options declared once, on the fields of a study's config dataclass.

Each field carries its help, its flags, the checks that need nothing but the value (minimum,
choices, non-empty list) and whether it belongs to the run's identity (the options that
``--resume`` must find unchanged because they change the numbers). The Typer command, the
``--config`` file, the resume check and the saved ``config.yaml`` are all read from here.
This module imports nothing heavy: it answers ``--help`` and option errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

_LIST = "list"  # a comma list on the command line, a list (or the same string) in a file


def _metadata(
    help: str,
    *,
    identity: bool = False,
    flags: Sequence[str] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    list_ok: bool = False,
    choices: Sequence[str] | None = None,
    saved: bool = True,
    argument: bool = False,
    show_default: bool = True,
) -> dict[str, Any]:
    return {
        "help": help,
        "identity": identity,
        "flags": tuple(flags),
        "minimum": minimum,
        "maximum": maximum,
        "list_ok": list_ok,
        "choices": tuple(choices) if choices else None,
        "saved": saved,
        "argument": argument,
        "show_default": show_default,
    }


def option(default: Any, help: str, **kw: Any) -> Any:
    """A config field that is also a command-line option (``--field-name`` unless ``flags``).
    ``identity``: part of the run's identity; ``minimum``/``choices``: checked before the run
    exists; ``saved=False``: where the run goes or how it talks, not what it computes (left
    out of ``config.yaml``); ``argument``: a positional argument."""
    return dataclasses.field(default=default, metadata=_metadata(help, **kw))


def listed(text: str | None, help: str, *, all_is_none: bool = False, **kw: Any) -> Any:
    """A comma-list option: ``text`` is its default as typed (None: not given); the field
    holds the list (``None`` for ``all`` when ``all_is_none``). An empty list is an error."""
    meta = _metadata(help, **kw) | {"kind": _LIST, "text": text, "all_is_none": all_is_none}
    return dataclasses.field(default_factory=lambda: parse_list(text, all_is_none), metadata=meta)


def parse_list(value: str | Sequence[str] | None, all_is_none: bool) -> list[str] | None:
    """'a, b,c' (or a list) -> ['a', 'b', 'c']; 'all' -> None where None means everything."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    items = [v.strip() for v in items if v.strip()]
    if all_is_none and items == ["all"]:
        return None
    return items


def flag(f: dataclasses.Field) -> str:
    """The field's main option name: ``deductible_rules`` -> ``--deductible-rules``."""
    flags = f.metadata.get("flags")
    return flags[0].split("/")[0] if flags else "--" + f.name.replace("_", "-")


def field_of(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def option_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def field_types(cls: type) -> dict[str, Any]:
    """The resolved Python type of every field (the dataclass's annotations are strings)."""
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``Path | None`` -> Path."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def coerce(f: dataclasses.Field, tp: Any, value: Any, where: str) -> Any:
    """A value from a config file (or the command line) converted to the field's type."""
    if f.metadata.get("kind") == _LIST:
        if value is not None and not isinstance(value, str | list | tuple):
            raise UserError(f"{where}: expected a comma list or a list, got {value!r}")
        return parse_list(value, f.metadata["all_is_none"])
    if value is None:
        return None
    base = base_type(tp)
    try:
        if base is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is Path:
            return Path(value)
        if base is str:
            if f.metadata.get("list_ok") and isinstance(value, list | tuple):
                # a comma-list text option (--layers) given as a YAML/TOML list
                if not value or any(
                    not isinstance(v, str | int) or v is True or v is False for v in value
                ):
                    raise TypeError
                return ",".join(str(v) for v in value)
            if not isinstance(value, str | int | float):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        name = getattr(base, "__name__", str(base))
        raise UserError(f"{where}: expected {name}, got {value!r}") from None
    return value


def check(cfg: Any) -> None:
    """The checks that need nothing but the values: minimum, choices, non-empty lists."""
    for f in option_fields(type(cfg)):
        value = getattr(cfg, f.name)
        name = flag(f)
        minimum = f.metadata.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            least = "0 or more" if minimum == 0 else f"at least {minimum:g}"
            raise UserError(f"{name} must be {least}, got {value}")
        maximum = f.metadata.get("maximum")
        if maximum is not None and value is not None and value > maximum:
            raise UserError(f"{name} must be at most {maximum}, got {value}")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise UserError(f"unknown {name} '{value}'; use one of {', '.join(choices)}")
        if f.name == "data_file" and value is not None and not Path(value).is_file():
            # told now, not after the seconds the data and model libraries take to import
            what = "is a directory" if Path(value).is_dir() else "does not exist"
            raise UserError(f"{name} {value} {what}; name an existing data file")
        if f.metadata.get("kind") == _LIST and value is not None and not value:
            raise UserError(f"{name} is empty; give a comma list, e.g. {f.metadata['text']}")


def identity(cfg: Any, resolved: dict[str, Any]) -> dict[str, Any]:
    """The run's identity: every identity field's value, or its resolved form from
    ``resolved`` (e.g. the engine auto picked, the layers 'all' means for this model)."""
    out = {}
    for f in option_fields(type(cfg)):
        if f.metadata["identity"]:
            value = resolved.get(f.name, getattr(cfg, f.name))
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out | {k: v for k, v in resolved.items() if k not in out}


def saved_values(cfg: Any) -> dict[str, Any]:
    """What ``config.yaml`` holds: every saved option, as a config file writes it."""
    out = {}
    for f in option_fields(type(cfg)):
        if f.metadata["saved"]:
            value = getattr(cfg, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def read_config_file(path: Path, name: str = "--config") -> dict[str, Any]:
    """A YAML or TOML file's top-level mapping (keys with '-' or '_'); ``name`` says in errors
    where the file came from."""
    if not path.is_file():
        raise UserError(f"{name} {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{name} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise UserError(
            f"{name} {path} cannot be read ({e.strerror}); name a readable file"
        ) from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise UserError(f"{name} {path}: use a .yaml, .yml or .toml file")
    except UserError:
        raise
    except Exception as e:  # the parsers' own error types
        raise UserError(f"{name} {path} does not parse: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{name} {path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _file_values(
    fields: dict[str, dataclasses.Field], types: dict[str, Any], path: Path, name: str
) -> dict[str, Any]:
    """The option values of a config file, each coerced to its field's type; an unknown key
    names the valid ones."""
    values = {}
    for key, value in read_config_file(path, name).items():
        if key not in fields:
            close = difflib.get_close_matches(str(key).replace("-", "_"), list(fields), n=1)
            if close:
                raise UserError(f"{name} {path}: unknown key '{key}'; did you mean '{close[0]}'?")
            raise UserError(f"{name} {path}: unknown key '{key}'; valid keys: " + ", ".join(fields))
        values[key] = coerce(fields[key], types[key], value, f"{name} {path}: {key}")
    return values


def shown(value: Any) -> str:
    """An option's value as a user reads it in an error: ``not given`` for None."""
    if value is None:
        return "not given"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def build(
    cls: type,
    given: dict[str, Any],
    explicit: set[str],
    config_file: Path | None,
    command: str | None = None,
) -> Any:
    """The config: defaults, then the ``--config`` file, then the flags given on the command
    line (``explicit``). With ``--resume`` (``command``: the study's name), the run's own
    ``config.yaml`` comes first, so ``--resume --run-dir R`` alone continues R as it was
    started; a file or flag that changes an identity option is refused here, naming it,
    before any data or model loads."""
    types = field_types(cls)
    fields = {f.name: f for f in option_fields(cls)}
    values: dict[str, Any] = {}
    if config_file is not None:
        values = _file_values(fields, types, config_file, "--config")
    for name in explicit:
        values[name] = coerce(fields[name], types[name], given[name], flag(fields[name]))
    saved: dict[str, Any] = {}
    if command is not None and values.get("resume"):
        from .runs.rundir import RUN_CONFIG, resumable

        run_dir = values.get("run_dir")
        resumable(run_dir, command)
        if (run_dir / RUN_CONFIG).is_file():
            saved = _file_values(fields, types, run_dir / RUN_CONFIG, "resumed run's")
        values = saved | values
    cfg = cls(**values)
    check(cfg)
    changed = [
        f"{flag(fields[k])}: {shown(saved[k])} -> {shown(getattr(cfg, k))}"
        for k in saved
        if fields[k].metadata["identity"] and saved[k] != getattr(cfg, k)
    ]
    if changed:
        raise UserError(
            f"cannot resume {values['run_dir']} with different settings ({'; '.join(changed)}): "
            "they change the numbers; drop them to continue the run with its own options, or "
            "start a new run"
        )
    return cfg
