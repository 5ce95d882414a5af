"""Typed stage configs: one dataclass per stage is the single source of its flags, defaults,
help text, config files and the docs' flag tables.

A stage declares its settings once, as dataclass fields made with `option(...)`:

    @dataclass
    class PrepareConfig:
        dataset: str | None = option(None, help="preset name ...")
        output_dir: Path | None = option(None, help="...", aliases=("--output-path",))

and gets, from this module:

- `add_arguments(parser, Config)`: one argparse flag per field (`output_dir` -> `--output-dir`;
  `bool` fields are `--x/--no-x`; lists take several values, or one comma-separated value with
  `sep=","`; a nested dataclass field contributes its own fields' flags), plus `--config FILE`
  and `--print-config`. Every flag defaults to "not given", so precedence is simply
  dataclass default < config file < command line, field by field (a nested field too).
- `aliases`: other spellings accepted silently — the SpecForge spellings the documented
  `scripts/*.py` commands use (../shared/DESIGN.md "Seed interface"). `deprecated`: spellings of
  earlier draftsmith releases, accepted with a one-line warning naming the new flag.
- `read_config_file(Config, path)`: a YAML (or JSON) file with any field by name (`learning_rate`
  or `learning-rate`, or an alias without its dashes), nested dataclasses as nested mappings;
  every value is converted to the field's type (`coerce`: PyYAML reads `1e-4` as a string, which
  becomes the float 0.0001), and an unknown key or a wrong value is an `InputError` naming the
  file, the line and the key (with the closest known key when there is one).
- `to_yaml(cfg)`: the resolved config, in the form `read_config_file` reads back (`--print-config`).
- `flag_table(Config)`: the markdown table of a stage's flags (docs/flags.md is generated from it;
  a test keeps the file equal to what the configs say).

Why our own ~450 lines over argparse rather than tyro, jsonargparse or simple-parsing: none of
them reports the line of a bad key in a YAML file, none warns on deprecated spellings while
accepting them, jsonargparse spells dataclass flags with underscores (our documented interface
and SpecForge's use dashes), and each would be one more dependency to keep working on the oldest
transformers/torch pair we support. What they would give us beyond this file (nested CLI groups,
subcommand trees, shell completion) we do not need. One file over ~400 lines because it is one
mechanism: the flag, file and docs views of a field must agree, and they are read together.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path

from draftsmith.errors import InputError
from draftsmith.logs import get_logger

log = get_logger(__name__)

_META = "draftsmith.option"
_NESTED = "__"          # argparse dest of a nested field: "<outer>__<inner>"


@dataclass(frozen=True)
class Option:
    help: str
    flag: str | None = None                 # default: "--" + the field name with dashes
    aliases: tuple[str, ...] = ()           # accepted silently (SpecForge's spellings)
    deprecated: tuple[str, ...] = ()        # accepted with a warning (earlier draftsmith spellings)
    choices: tuple | None = None
    metavar: str | None = None
    group: str | None = None                # help-section title
    sep: str | None = None                  # list fields: one value split on sep (else nargs="+")
    nargs: str | None = None                # e.g. "?" with const
    const: object = None
    positional: bool = False
    cli: bool = True                        # False: config-file / Python only (no flag)


def option(default=MISSING, *, help: str, default_factory=MISSING, **kwargs):
    """A dataclass field with its command-line metadata (see `Option`)."""
    meta = {_META: Option(help=help, **{k: tuple(v) if k in ("aliases", "deprecated", "choices") and v is not None
                                       else v for k, v in kwargs.items()})}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----- the fields of a config, nested dataclasses flattened ------------------------------------------

@dataclass(frozen=True)
class Flag:
    path: tuple[str, ...]                   # ("limits", "max_row_bytes")
    kind: object                            # the field's type
    option: Option
    default: object                         # MISSING for a required field

    @property
    def name(self) -> str:
        return self.option.flag or "--" + self.path[-1].replace("_", "-")

    @property
    def dest(self) -> str:
        return _NESTED.join(self.path)

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name,) + self.option.aliases + self.option.deprecated


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flags(cls, prefix: tuple[str, ...] = ()) -> list[Flag]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += flags(kind, prefix + (f.name,))
        elif _META in f.metadata:
            out.append(Flag(prefix + (f.name,), kind, f.metadata[_META], _default(f)))
    return out


# ----- values: one converter for flags and config files ----------------------------------------------

def _strip_optional(kind):
    args = typing.get_args(kind)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return kind, False


def describe(kind) -> str:
    inner, optional = _strip_optional(kind)
    origin = typing.get_origin(inner)
    if origin is list:
        text = "a list of " + {int: "integers", float: "numbers", str: "strings", Path: "paths"}.get(
            typing.get_args(inner)[0], "values")
    elif origin is typing.Literal:
        text = "one of " + ", ".join(map(str, typing.get_args(inner)))
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                Path: "a path"}.get(inner, getattr(inner, "__name__", str(inner)))
    return text + (" or null" if optional else "")


def coerce(value, kind):
    """`value` as `kind` (int, float, bool, str, Path, Literal, list[...], X | None); ValueError
    naming what was expected when it is not one. Strings convert to numbers (`1e-4` -> 0.0001)."""
    inner, optional = _strip_optional(kind)
    if value is None:
        if optional:
            return None
        raise ValueError(f"expected {describe(kind)}, got null")
    origin = typing.get_origin(inner)
    if origin is list:
        (item,) = typing.get_args(inner)
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected {describe(kind)}, got {value!r}")
        return [coerce(v, item) for v in items]
    if origin is typing.Literal:
        if value in typing.get_args(inner):
            return value
    elif inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif inner is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif inner is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    raise ValueError(f"expected {describe(kind)}, got {value!r}")


# ----- argparse -------------------------------------------------------------------------------------

class _Deprecated(argparse.Action):
    """Mixin: a one-line warning naming the current flag, then the base action."""

    canonical = ""

    def __call__(self, parser, namespace, values, option_string=None):
        log.warning("%s is deprecated; use %s", option_string, self.canonical)
        super().__call__(parser, namespace, values, option_string)


class _Store(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


def _converter(kind, flag: str):
    def convert(text: str):
        try:
            return coerce(text, kind)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{flag}: {e}") from None
    return convert


def _add(target, spec: Flag, strings: tuple[str, ...], deprecated_of: str | None = None) -> None:
    o = spec.option
    inner, _ = _strip_optional(spec.kind)
    kwargs: dict = {"dest": spec.dest, "default": argparse.SUPPRESS}
    if inner is bool:
        base = argparse.BooleanOptionalAction
    else:
        base = _Store
        origin = typing.get_origin(inner)
        if origin is list and not o.sep:
            kwargs["nargs"] = o.nargs or "+"
            kwargs["type"] = _converter(typing.get_args(inner)[0], spec.name)
        else:
            kwargs["type"] = _converter(spec.kind, spec.name)
            if o.nargs:
                kwargs["nargs"] = o.nargs
                kwargs["const"] = o.const
        choices = o.choices or (typing.get_args(inner) if origin is typing.Literal else None)
        if choices:
            kwargs["choices"] = choices
        kwargs["metavar"] = o.metavar or ({int: "N", float: "X", Path: "PATH"}.get(inner) if origin is not list else None)
    if deprecated_of:
        kwargs["help"] = argparse.SUPPRESS
        kwargs["action"] = type("Deprecated", (_Deprecated, base), {"canonical": deprecated_of})
    else:
        kwargs["help"] = _help(spec)
        kwargs["action"] = base
    if o.positional:
        kwargs.pop("dest")
        if spec.default is not MISSING:
            kwargs["nargs"] = "?" if typing.get_origin(inner) is not list else "*"
        target.add_argument(spec.dest, **kwargs)
    else:
        target.add_argument(*strings, **kwargs)


def _help(spec: Flag) -> str:
    text = spec.option.help
    if spec.default is MISSING:
        return text + " (required)"
    if spec.default is None or spec.default == [] or _strip_optional(spec.kind)[0] is bool and not spec.default:
        return text
    shown = ",".join(map(str, spec.default)) if isinstance(spec.default, list) else spec.default
    return f"{text} (default: {shown})".replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, cls, *, config_file: bool = True) -> None:
    """One flag per field of `cls` (see the module docstring), grouped by `Option.group`."""
    if config_file:
        parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                            help="YAML or JSON file with any of these options by name (values checked against "
                                 "their types; flags given here win)")
        parser.add_argument("--print-config", action="store_true", default=argparse.SUPPRESS,
                            help="print the resolved config as YAML (readable by --config) and exit")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in flags(cls):
        if not spec.option.cli:
            continue
        target = parser
        if spec.option.group:
            target = groups.get(spec.option.group) or groups.setdefault(
                spec.option.group, parser.add_argument_group(spec.option.group))
        _add(target, spec, (spec.name,) + spec.option.aliases)
        if spec.option.deprecated:
            _add(target, spec, spec.option.deprecated, deprecated_of=spec.name)


def _build(cls, values: dict, where: str):
    """`cls(**values)` with nested dataclasses built from their own sub-dicts; a missing required
    field is an InputError naming its flag."""
    kwargs = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            sub = values.get(f.name, {})
            if sub or _default(f) is MISSING:
                base = {} if _default(f) is MISSING else dataclasses.asdict(_default(f))
                kwargs[f.name] = _build(kind, {**base, **sub}, where)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif _default(f) is MISSING:
            spec = f.metadata.get(_META)
            name = (spec.flag if spec and spec.flag else "--" + f.name.replace("_", "-"))
            raise InputError(f"{name} is required{where}", field=name)
    return cls(**kwargs)


def from_args(cls, args: argparse.Namespace):
    """The config: `cls` defaults <- the `--config` file <- the flags given on the command line."""
    given = vars(args)
    values = read_config_file(cls, Path(given["config"])) if given.get("config") else {}
    for spec in flags(cls):
        if spec.dest in given:
            node = values
            for part in spec.path[:-1]:
                node = node.setdefault(part, {})
            node[spec.path[-1]] = given[spec.dest]
    return _build(cls, values, "" if given.get("config") else " (on the command line or in --config)")


# ----- config files -----------------------------------------------------------------------------------

def _key_lines(node, prefix=()) -> dict[tuple[str, ...], int]:
    import yaml

    lines = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (str(k.value),)
            lines[path] = k.start_mark.line + 1
            lines.update(_key_lines(v, path))
    return lines


def _names(cls) -> dict[str, tuple[str, object, str | None]]:
    """Every accepted key of one level -> (field name, type, the canonical flag when deprecated)."""
    names = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        names[f.name] = (f.name, kind, None)
        names[f.name.replace("_", "-")] = (f.name, kind, None)
        spec = f.metadata.get(_META)
        if spec:
            canonical = spec.flag or "--" + f.name.replace("_", "-")
            for s in (spec.flag,) + spec.aliases if spec.flag else spec.aliases:
                names[s.lstrip("-")] = (f.name, kind, None)
                names[s.lstrip("-").replace("-", "_")] = (f.name, kind, None)
            for s in spec.deprecated:
                names[s.lstrip("-")] = (f.name, kind, canonical)
                names[s.lstrip("-").replace("-", "_")] = (f.name, kind, canonical)
    return names


def read_config_file(cls, path: Path) -> dict:
    """The settings of a YAML / JSON file as a (nested) dict of field names to typed values."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=path, field="--config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"invalid YAML: {getattr(e, 'problem', e)}", path=path,
                         line=None if mark is None else mark.line + 1) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("expected a mapping of option names to values", path=path, line=1)
    return _read_level(cls, data, _key_lines(node), (), path)


def _read_level(cls, data: dict, lines: dict, prefix: tuple, path: Path) -> dict:
    names = _names(cls)
    out: dict = {}
    for key, value in data.items():
        where = prefix + (str(key),)
        label = ".".join(where)
        line = lines.get(where)
        if str(key) not in names:
            close = difflib.get_close_matches(str(key), [n for n in names if "-" not in n], n=1)
            hint = f" (did you mean {'.'.join(prefix + (close[0],))!r}?)" if close else ""
            raise InputError(f"unknown option{hint}", path=path, line=line, field=label)
        name, kind, canonical = names[str(key)]
        if canonical:
            log.warning("%s, line %s: %r is deprecated; use %r", path, line, label, canonical.lstrip("-"))
        if name in out:
            raise InputError("given twice (under two spellings)", path=path, line=line, field=label)
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise InputError(f"expected a mapping of {kind.__name__} options", path=path, line=line, field=label)
            out[name] = _read_level(kind, value, lines, where, path)
            continue
        try:
            out[name] = coerce(value, kind)
        except ValueError as e:
            raise InputError(str(e), path=path, line=line, field=label) from None
    return out


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_yaml(cfg) -> str:
    """The resolved config as YAML that `read_config_file` reads back to an equal config."""
    import yaml

    return yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False, default_flow_style=False)


# ----- docs -------------------------------------------------------------------------------------------

def _type_label(kind) -> str:
    inner, _ = _strip_optional(kind)
    origin = typing.get_origin(inner)
    if origin is list:
        return "list[" + getattr(typing.get_args(inner)[0], "__name__", "?") + "]"
    if origin is typing.Literal:
        return "|".join(map(str, typing.get_args(inner)))
    return getattr(inner, "__name__", str(inner))


def flag_table(cls) -> str:
    """A stage's flags as a markdown table: flag, other spellings, type, default, help."""
    rows = ["| flag | also accepted | type | default | meaning |", "|---|---|---|---|---|"]
    for spec in flags(cls):
        if not spec.option.cli:
            continue
        others = [f"`{a}`" for a in spec.option.aliases] + [f"`{d}` (deprecated)" for d in spec.option.deprecated]
        default = "required" if spec.default is MISSING else (
            "" if spec.default is None else f"`{_plain(spec.default)}`")
        name = f"`{spec.path[-1]}` (positional)" if spec.option.positional else f"`{spec.name}`"
        text = spec.option.help.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {name} | {', '.join(others)} | {_type_label(spec.kind)} | {default} | {text} |")
    return "\n".join(rows)
