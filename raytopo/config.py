"""Typed configs: nested dataclasses <-> plain dicts/YAML, with ``key.path=value`` overrides.

Every config in raytopo is a (possibly nested) dataclass that validates itself in ``__post_init__``.
This module converts between those and the plain dicts that YAML files, Ray and Tune use:

* `from_dict(cls, data)` builds a dataclass from a dict, recursing into nested dataclass fields, coercing
  YAML scalars to the annotated types (tuples from lists, ints/floats/bools, Literals checked), and
  rejecting unknown keys with a message naming the key and the allowed ones.
* `to_dict(obj)` is the inverse (tuples become lists so the result is YAML/JSON-safe).
* `apply_overrides(data, ["a.b=3", ...])` edits a dict before conversion (values parsed as YAML).

A bad value fails here, before any Ray worker starts, with a `ConfigError` naming the field path.

Ranges are declared where a field is: ``lr: Annotated[float, Bounds(gt=0)] = 2e-5``. Every config dataclass
derives from `Checked`, whose check runs before the class's own ``__post_init__`` on every construction (from
YAML, a flag, a Tune space or code): a declared range is enforced, and every float must be finite (``.nan`` or
``.inf`` in a YAML file is a typo, never a setting) unless its `Bounds` say ``finite=False``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from raytopo.errors import ConfigError

T = TypeVar("T")


# --- declared ranges --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a number field allows, declared with ``Annotated[float, Bounds(...)]``; ``finite=False`` lets a
    float be infinite (never NaN)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True

    def allows(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``, ..."""
        low = (f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None)
        high = (f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        if high:
            return f"{'<=' if self.le is not None else '<'} {high[:-1]}"
        return "a finite number" if self.finite else "a number"


AtLeastOne = Annotated[int, Bounds(ge=1)]
NonNegative = Annotated[float, Bounds(ge=0)]
NonNegativeInt = Annotated[int, Bounds(ge=0)]
Positive = Annotated[float, Bounds(gt=0)]
Fraction = Annotated[float, Bounds(ge=0, le=1)]


class Checked:
    """Base of every config dataclass: declared `Bounds` and finite floats are checked on every construction,
    before the class's own ``__post_init__`` (which keeps the checks that relate several fields).
    ``config_path`` names the section in messages of an instance built outside `from_dict` (``train``, ...)."""

    config_path: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self: Any) -> None:
            check_numbers(self)
            if own is not None:
                own(self)         # may normalise a value (an int dim to "1") before its choices are checked
            check_choices(self)

        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]


def check_fields(obj: Any) -> None:
    """Every field of dataclass ``obj`` against its declared `Bounds` (floats finite unless declared otherwise)
    and its ``Literal`` choices."""
    check_numbers(obj)
    check_choices(obj)


def _prefix(obj: Any) -> str:
    return f"{type(obj).config_path}." if getattr(type(obj), "config_path", "") else ""


def check_numbers(obj: Any) -> None:
    prefix = _prefix(obj)
    for name, bounds in _field_bounds(type(obj)).items():
        _check_number(getattr(obj, name), bounds, f"{prefix}{name}")


def check_choices(obj: Any) -> None:
    prefix = _prefix(obj)
    for name, allowed in _field_choices(type(obj)).items():
        value = getattr(obj, name)
        if value not in allowed:
            raise ConfigError(f"{prefix}{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")


@functools.lru_cache(maxsize=None)
def _field_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each ``Literal`` field (``None`` added for an optional one)."""
    hints = get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        annotation = hints.get(field.name)
        options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
        literals = [o for o in options if get_origin(o) is Literal]
        if literals:
            out[field.name] = tuple(v for o in literals for v in get_args(o)) + (
                (None,) if type(None) in options else ())
    return out


@functools.lru_cache(maxsize=None)
def _field_bounds(cls: type) -> dict[str, Bounds]:
    """Each numeric field's `Bounds` (a default ``Bounds()`` for an undeclared float: finite)."""
    hints = get_type_hints(cls, include_extras=True)
    out = {}
    for field in dataclasses.fields(cls):
        bounds = _bounds_of(hints.get(field.name))
        if bounds is not None:
            out[field.name] = bounds
    return out


def _bounds_of(annotation: Any) -> Bounds | None:
    if get_origin(annotation) is Annotated:
        declared = [m for m in annotation.__metadata__ if isinstance(m, Bounds)]
        return declared[0] if declared else _bounds_of(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType, tuple, list, dict):
        found = [b for b in (_bounds_of(arg) for arg in get_args(annotation) if arg is not Ellipsis) if b]
        return found[0] if found else None
    return Bounds() if annotation is float else None


def _check_number(value: Any, bounds: Bounds, path: str) -> None:
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_number(item, bounds, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_number(item, bounds, f"{path}.{key}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if math.isnan(value) or (bounds.finite and math.isinf(value)):
        wanted = bounds.describe() if bounds.describe().startswith("a ") else f"a finite number {bounds.describe()}"
        raise ConfigError(f"{path}: expected {wanted}, got {value}")
    if not bounds.allows(value):
        raise ConfigError(f"{path}: expected {bounds.describe()}, got {value}")


# --- dicts <-> dataclasses --------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise `ConfigError`."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown setting; allowed: {', '.join(sorted(fields))}")
    kwargs = {name: _coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(_located(str(error), path, fields)) from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path or cls.__name__}: {error}") from None


def _located(message: str, path: str, fields: Any) -> str:
    """A dataclass's own error message placed under ``path``: ``n: ...`` -> ``path.n: ...`` for a field ``n``."""
    if not path or message.startswith(path):
        return message
    field_name = message.split(":", 1)[0]
    return f"{path}.{message}" if field_name in fields else f"{path}: {message}"


def to_dict(obj: Any) -> Any:
    """A dataclass (recursively) as plain dicts/lists/scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing or malformed file raises `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: expected a YAML text file, found binary data (an image?)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def dump_yaml(data: Any, path: str | Path) -> Path:
    """Write ``to_dict(data)`` as YAML atomically (temporary name, then rename)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(yaml.safe_dump(to_dict(data), sort_keys=False))
    temporary.replace(path)
    return path


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b.c=value`` applied (value parsed as YAML: 3, 1e-4, true, [0, 1])."""
    result = _deep_copy(data)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


# --- coercion --------------------------------------------------------------------------------------------------


def _coerce(annotation: Any, value: Any, path: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{path}: got {value!r}")
    if origin is Literal:
        allowed = get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return value if isinstance(value, annotation) else from_dict(annotation, value, path)
    if origin is tuple:
        items = _as_sequence(value, path)
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(items))
        if len(args) != len(items):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(items)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
    if origin is list:
        (arg,) = get_args(annotation) or (Any,)
        return [_coerce(arg, v, f"{path}[{i}]") for i, v in enumerate(_as_sequence(value, path))]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_type, value_type = get_args(annotation) or (Any, Any)
        return {_coerce(key_type, k, path): _coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}
    return _coerce_scalar(annotation, value, path)


def _coerce_scalar(annotation: Any, value: Any, path: str) -> Any:
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if annotation is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or int(value) != value):
            raise ConfigError(f"{path}: expected a whole number, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected text, got {value!r}")
        return str(value)
    if annotation is Path:
        return Path(str(value))
    return value


def _as_sequence(value: Any, path: str) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return [value]
    raise ConfigError(f"{path}: expected a list, got {value!r}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def field_names(cls: type) -> list[str]:
    """The init field names of a dataclass (for messages listing allowed keys)."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


__all__ = ["AtLeastOne", "Bounds", "Checked", "Fraction", "NonNegative", "NonNegativeInt", "Positive", "apply_overrides",
           "check_fields", "dump_yaml", "field_names", "from_dict", "load_yaml", "to_dict"]
