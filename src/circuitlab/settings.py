"""One way to read settings: config files, `--set FIELD=VALUE` overrides and notebook parameters become typed
values, and every refusal names where the value came from, the field, the value and what would be accepted.

    values = read_mapping("configs/sparse.yaml")                       # refuses empty and non-mapping files
    cfg = build(TrainConfig, values["train"], source="configs/sparse.yaml, train:")
    overrides = parse_overrides(PruneConfig, ["steps=50", "target_loss=1e-1"])   # {"steps": 50, "target_loss": 0.1}

Values are coerced by the field's annotation (`coerce`): a bool takes true/false/yes/no/1/0 only, an int
refuses 2.5, a float takes `1e-3` (which PyYAML reads as text) and refuses nan and inf, `X | None` takes
null, a tuple takes a list of the right length; text for any other type is read as a YAML scalar first.
A settings dataclass calls `coerce_fields` and `check` from its `__post_init__`, so building it from Python,
from a file or with `dataclasses.replace` is checked the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
Check = tuple[Callable[[Any], bool], str]  # (is the value valid, what a valid value is)

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
NULL_WORDS = ("null", "none", "~")


class SettingsError(ValueError):
    """A setting, file or parameter circuitlab refuses; the message says which, why, and what to write instead."""


# ------------------------------------------------------------------------------------------------ coercion


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """`value` as the type `annotation` describes, or a SettingsError naming `name` and the value."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        if len(options) != 1:
            raise TypeError(f"{name}: settings support X | None unions only, not {annotation}")
        if value is None or (options[0] is not str and isinstance(value, str) and value.lower() in NULL_WORDS):
            return None
        try:
            return coerce(value, options[0], name)
        except SettingsError as err:
            raise SettingsError(f"{err}, or null") from None
    if isinstance(value, str) and annotation not in (str, bool):
        value = _parse_text(value)
    if annotation is Any:
        return value
    if annotation is bool:
        return _to_bool(value, name)
    if annotation is int:
        return _to_int(value, name)
    if annotation is float:
        return _to_float(value, name)
    if annotation is str:
        if not isinstance(value, str):
            raise SettingsError(f"{name}={value!r} is not text: write it in quotes")
        return value
    if (origin or annotation) in (tuple, list):
        return _to_sequence(value, origin or annotation, args, name)
    raise TypeError(f"{name}: settings cannot coerce values to {annotation}")


def _parse_text(text: str) -> Any:
    """Text as a YAML value (`3`, `0.5`, `true`, `[1, 2]`, `null`), or the text itself when it is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _to_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise SettingsError(f"{name}={value!r} is not a boolean: write true or false (yes/no and 1/0 also work)")


def _to_int(value: Any, name: str) -> int:
    if isinstance(value, str):
        value = _number_from_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise SettingsError(f"{name}={value!r} is not a whole number: write an integer such as 100")


def _to_float(value: Any, name: str) -> float:
    if isinstance(value, str):
        value = _number_from_text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise SettingsError(f"{name}={value!r} is not a finite number: write it like 0.01 or 1e-2")


def _number_from_text(text: str) -> Any:
    """`'1e-3'` -> 0.001 (PyYAML 1.1 reads exponents without a dot as text); other text is returned as is."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _to_sequence(value: Any, kind: type, args: tuple, name: str) -> tuple | list:
    if not isinstance(value, (list, tuple)):
        raise SettingsError(f"{name}={value!r} is not a list: write it like [0.9, 0.95]")
    if not args:
        return kind(value)
    fixed_length = kind is tuple and args[-1] is not Ellipsis  # tuple[float, float], not tuple[float, ...]
    if fixed_length and len(value) != len(args):
        raise SettingsError(f"{name}={value!r} has {len(value)} items: it takes exactly {len(args)}")
    item_types = args if fixed_length else [args[0]] * len(value)
    items = [
        coerce(item, item_type, f"{name}[{i}]")
        for i, (item, item_type) in enumerate(zip(value, item_types, strict=True))
    ]
    return kind(items)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The init fields of the dataclass `cls` and their (evaluated) annotations."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls) if field.init}


# ------------------------------------------------------------------------------------- dataclass settings


def coerce_fields(instance: Any) -> None:
    """Coerce every field of the dataclass `instance` to its annotation, in place (call it in `__post_init__`);
    one SettingsError lists every field that cannot be."""
    problems = []
    cls: type = type(instance)  # (mypy does not take type[Any] for the hashable key the cache needs)
    for name, annotation in _field_types(cls).items():
        try:
            setattr(instance, name, coerce(getattr(instance, name), annotation, name))
        except SettingsError as err:
            problems.append(str(err))
    _raise(instance, problems)


def check(instance: Any, checks: Mapping[str, Check], problems: Iterable[str] = ()) -> None:
    """Apply `checks` (field -> `at_least(1)`, `between(0, 1)`, ...; None values pass) to `instance` and raise
    one SettingsError listing every failure plus `problems` (checks across fields)."""
    failed = [
        f"{name}={getattr(instance, name)!r} must be {description}"
        for name, (is_valid, description) in checks.items()
        if getattr(instance, name) is not None and not is_valid(getattr(instance, name))
    ]
    _raise(instance, failed + list(problems))


def _raise(instance: Any, problems: list[str]) -> None:
    if problems:
        raise SettingsError(f"Invalid {type(instance).__name__}: " + "; ".join(problems))


def at_least(low: float) -> Check:
    return (lambda value: value >= low), f"at least {low}"


def above(low: float) -> Check:
    return (lambda value: value > low), f"greater than {low}"


def between(low: float, high: float, *, open_low: bool = False) -> Check:
    """low <= value <= high (low < value with `open_low`)."""
    return (lambda value: (low < value if open_low else low <= value) and value <= high), (
        f"in {'(' if open_low else '['}{low}, {high}]"
    )


def one_of(choices: Iterable[Any]) -> Check:
    choices = tuple(choices)
    return (lambda value: value in choices), f"one of {choices}"


def build(cls: type[T], values: Any, source: str) -> T:
    """The dataclass `cls` from a mapping of field values, refusing anything but a mapping and unknown keys
    (listing the valid ones); every message starts with `source` (a file path, `--set`, ...)."""
    if not isinstance(values, Mapping):
        raise SettingsError(
            f"{source}: expected a mapping of {cls.__name__} fields (name: value lines), found "
            f"{type(values).__name__} {values!r}"
        )
    _refuse_unknown(cls, values, source)
    try:
        return cls(**values)
    except SettingsError as err:
        raise SettingsError(f"{source}: {err}") from None


def parse_overrides(cls: type, items: Iterable[str], source: str = "--set", prefix: str = "") -> dict[str, Any]:
    """`["steps=50", "lr=1e-3"]` -> `{"steps": 50, "lr": 0.001}`, typed by the dataclass `cls`'s fields, ready to
    merge into a config mapping for `build`. Items are `prefix + FIELD=VALUE` (`prefix` is e.g. "train.")."""
    types_ = _field_types(cls)
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.startswith(prefix) or not key[len(prefix) :]:
            example = next(iter(types_))
            raise SettingsError(f"{source} {item!r}: write {prefix}FIELD=VALUE, e.g. {prefix}{example}=...")
        name = key[len(prefix) :]
        _refuse_unknown(cls, {name: text}, f"{source} {item}")
        try:
            values[name] = coerce(text, types_[name], name)
        except SettingsError as err:
            raise SettingsError(f"{source} {item}: {err}") from None
    return values


def _refuse_unknown(cls: type, values: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(_field_types(cls)))
    if unknown:
        raise SettingsError(
            f"{source}: unknown {cls.__name__} field(s) {unknown}. Valid fields: {', '.join(_field_types(cls))}"
        )


# --------------------------------------------------------------------------------------------------- files


def read_sections(
    path: str | Path, sections: Sequence[str], overrides: Sequence[str] = (), overridable: Sequence[str] | None = None
) -> dict[str, Any]:
    """A config file of top-level `sections` (`read_mapping`), with "section.field=value" `overrides` of the
    `overridable` ones (default: all); an unknown section, in the file or an override, is refused by name."""
    raw = read_mapping(path)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise SettingsError(f"{path}: unknown section(s) {unknown}; its sections are {', '.join(sections)}")
    overridable = sections if overridable is None else overridable
    for item in overrides:
        if item.partition(".")[0] not in overridable:
            raise SettingsError(f"--set {item!r}: use section.field=value with a section of {', '.join(overridable)}")
    return raw


def section_values(
    raw: dict[str, Any], name: str, cls: type, overrides: Sequence[str], path: str | Path
) -> tuple[Any, str]:
    """Section `name` of a `read_sections` file with its overrides applied (each checked against `cls`), and where
    the values came from, for `build`'s messages."""
    values = {} if raw.get(name) is None else raw[name]
    mine = [item for item in overrides if item.startswith(f"{name}.")]
    changes = parse_overrides(cls, mine, prefix=f"{name}.")
    source = f"{path}, {name}" + "".join(f" --set {item}" for item in mine)
    return ({**values, **changes} if isinstance(values, dict) else values), source


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A JSON (`.json`) or YAML file that holds a mapping; empty, unparsable and non-mapping files are refused."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: no such file; check the path")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    text = path.read_text()
    try:
        values = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SettingsError(f"{path} is not valid {kind} ({err}); fix the syntax at the place shown") from None
    if values is None or values == {}:
        raise SettingsError(f"{path} is empty; write the settings it should hold (name: value lines)")
    if not isinstance(values, dict):
        raise SettingsError(
            f"{path} holds a {type(values).__name__} ({str(values)[:60]!r}), not a mapping of settings; "
            "write name: value lines"
        )
    return values
