"""Labels parsed from file names, following the TDN conventions (docs/references.md, TDN 4).

| convention      | file name            | label                                   |
|-----------------|----------------------|-----------------------------------------|
| ``count``       | ``c_xxx.ext``        | c = components (dim 0) or holes (dim 1) |
| ``two_counts``  | ``u_v_xxx.ext``      | u = components, v = holes               |
| ``count_object``| ``c_objname_xxx.ext``| c, plus the object class name           |
| ``none``        | any name             | no label (unlabelled images)            |

* Fields are separated by underscores; the extension is ignored. ``c`` (and ``u``, ``v``) is the text
  before the first (second) underscore parsed as a float, as the reference does. A count must be a plain
  non-negative decimal number (``3``, ``2.5``, ``1e1``); ``nan``, ``inf`` and negative values are errors.
* ``xxx`` is a free, non-empty identifier (it may itself contain underscores).
* An object name is the text between the first and second underscore, so it cannot contain an
  underscore, and it must not look like a number (that catches a ``u_v_xxx`` folder read as
  ``count_object``).
* The integer index of an object name is its position in the sorted set of names of the training folder
  (reference); :func:`object_index_map` computes it. The map is a plain ``dict[str, int]`` so it can be
  stored (JSON) with a dataset and a checkpoint and reused for sampling and evaluation.

A name that does not fit raises :class:`~raytopo.errors.InputError` naming the file and the expected
pattern; nothing is skipped and no label defaults to zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from raytopo.errors import ConfigError, InputError

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class LabelConvention(str, Enum):
    """How a file name encodes its label."""

    COUNT = "count"
    TWO_COUNTS = "two_counts"
    COUNT_OBJECT = "count_object"
    NONE = "none"

    @property
    def num_counts(self) -> int:
        """Number of float counts in a label of this convention."""
        return {LabelConvention.TWO_COUNTS: 2, LabelConvention.NONE: 0}.get(self, 1)

    @property
    def pattern(self) -> str:
        """The expected file-name pattern, for error messages."""
        return _PATTERNS[self][0]

    @property
    def example(self) -> str:
        """An example file name of this convention, for error messages."""
        return _PATTERNS[self][1]


_PATTERNS = {
    LabelConvention.COUNT: ("<count>_<id>.<ext>", "3_0001.png"),
    LabelConvention.TWO_COUNTS: ("<components>_<holes>_<id>.<ext>", "3_1_0001.png"),
    LabelConvention.COUNT_OBJECT: ("<count>_<object>_<id>.<ext>", "3_circle_0001.png"),
    LabelConvention.NONE: ("<any name>.<ext>", "0001.png"),
}


@dataclass(frozen=True)
class Label:
    """The label of one file: its counts (1 or 2 floats) and, for ``count_object``, the object name."""

    counts: tuple[float, ...]
    object_name: str | None = None


def as_convention(value: LabelConvention | str) -> LabelConvention:
    """``value`` as a :class:`LabelConvention`; ConfigError naming the allowed values otherwise."""
    try:
        return LabelConvention(value)
    except ValueError:
        allowed = ", ".join(c.value for c in LabelConvention)
        raise ConfigError(f"convention: expected one of {allowed}, got {value!r}") from None


def parse_label(path: str | Path, convention: LabelConvention | str) -> Label:
    """Parse the label encoded in the file name of ``path`` (see the module docstring).

    Raises:
        ConfigError: unknown convention.
        InputError: the name does not fit the convention (message names the file and the pattern).
    """
    convention = as_convention(convention)
    path = Path(path)
    if convention is LabelConvention.NONE:
        return Label(counts=())
    fields = path.stem.split("_", 2 if convention is not LabelConvention.COUNT else 1)
    if len(fields) != convention.num_counts + (2 if convention is LabelConvention.COUNT_OBJECT else 1):
        raise _mismatch(path, convention)
    if any(not field for field in fields):
        raise _mismatch(path, convention)
    counts = tuple(_parse_count(field, path, convention) for field in fields[: convention.num_counts])
    if convention is not LabelConvention.COUNT_OBJECT:
        return Label(counts=counts)
    return Label(counts=counts, object_name=_parse_object_name(fields[1], path, convention))


def object_index_map(names: Iterable[str | None]) -> dict[str, int]:
    """Object name -> index = position in the sorted set of names (the reference's mapping).

    ``None`` entries (labels without an object) are ignored.
    """
    return {name: index for index, name in enumerate(sorted({n for n in names if n is not None}))}


def _parse_count(text: str, path: Path, convention: LabelConvention) -> float:
    if not _NUMBER.fullmatch(text):
        raise _mismatch(path, convention, f"count {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise _mismatch(path, convention, f"count {text!r} is not finite")
    if value < 0:
        raise InputError(
            f"{path}: expected a non-negative count, got {text!r} "
            f"({convention.value} convention: '{convention.pattern}', e.g. '{convention.example}')"
        )
    return value + 0.0  # -0.0 -> 0.0


def _parse_object_name(text: str, path: Path, convention: LabelConvention) -> str:
    if _NUMBER.fullmatch(text):
        raise _mismatch(path, convention, f"object name {text!r} looks like a count")
    return text


def _mismatch(path: Path, convention: LabelConvention, detail: str | None = None) -> InputError:
    reason = f" ({detail})" if detail else ""
    return InputError(
        f"{path}: expected '{convention.pattern}' ({convention.value} convention), "
        f"e.g. '{convention.example}'{reason}"
    )
