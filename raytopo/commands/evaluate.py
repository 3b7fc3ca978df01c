"""`raytopo evaluate DIR`: topology metrics of a folder of generated masks labelled by file name.

The TDN reference evaluation (docs/references.md, TDN 5), with its gaps fixed:

* Every image directly in DIR (not in sub-folders) is read; its target count(s) come from its file name
  (:func:`raytopo.data.labels.parse_label`). A name that does not fit the convention, a non-integer count,
  an unreadable image and an empty folder are one-line errors; nothing is skipped.
* Binarisation: channel 0 of the 8-bit image, foreground ``> 128`` (palette and 1-bit images are first
  converted to RGBA/8-bit; 16-bit grey images are scaled to 8 bits and 32-bit/float images refused, as in
  training: :func:`raytopo.data.folder.open_image`).
* ``--dim 0``: components, measured twice, with 4- and with 8-connectivity (the reference reports both).
  ``--dim 1``: holes (vertex construction, see :mod:`raytopo.topology.betti`). ``--dim both``: the two
  counts of a ``u_v_xxx`` name are evaluated separately, components against ``u`` and holes against
  ``v`` (the reference cannot parse two-count names). With ``two_counts`` names, ``--dim 0`` uses ``u``
  and ``--dim 1`` uses ``v``. The object name of ``count_object`` names is not used by the metrics.
* Metrics: :func:`raytopo.eval.topology_metrics.count_metrics` (accuracy, macro P/R/F1 ± std over
  classes, MAE ± std, per-class rows) plus a histogram of true and predicted counts.

Result of :func:`evaluate_folder` (also the ``--json`` / ``--out`` document)::

    {"folder": str, "convention": str, "dims": [int], "n": int, "classes": [int] | None,
     "measures": {MEASURE: {"dim": int, "connectivity": int | None,
                            "metrics": {accuracy, accuracy_std, ..., n, per_class: {k: {...}}},
                            "histogram": {count: {"true": int, "pred": int}}}}}

``MEASURE`` is ``dim0_conn4`` and ``dim0_conn8`` (components) and ``dim1`` (holes).
:func:`flat_metrics` flattens it for Ray Tune / the demo to ``{MEASURE}_{METRIC}`` floats, ``METRIC`` in
:data:`FLAT_METRICS`, plus ``n``: e.g. ``dim0_conn4_accuracy``, ``dim0_conn8_f1``, ``dim1_mae_std``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from raytopo.data.folder import open_image_file, scan_folder
from raytopo.data.labels import LabelConvention, as_convention
from raytopo.errors import ConfigError, InputError
from raytopo.progress import progress
from raytopo.eval.topology_metrics import count_histogram, count_mask, count_metrics
from raytopo.topology.betti import binarise

FLAT_METRICS: tuple[str, ...] = (
    "accuracy", "accuracy_std", "precision", "precision_std", "recall", "recall_std",
    "f1", "f1_std", "mae", "mae_std",
)
_EIGHT_BIT_MODES = frozenset({"L", "LA", "RGB", "RGBA"})


@dataclass(frozen=True)
class EvaluateArgs:
    """Arguments of `raytopo evaluate` (built by raytopo/cli.py)."""

    folder: Path
    dims: tuple[int, ...] = (0,)
    convention: str | None = None
    classes: str | None = None  # comma-separated, e.g. "1,2,3,4,5"
    as_json: bool = False
    out: Path | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class Measure:
    """One measured count: its result key, homology dimension, connectivity and index in the label."""

    name: str
    dim: int
    connectivity: int | None
    label_index: int


def default_convention(dims: Sequence[int]) -> LabelConvention:
    """``two_counts`` when both dimensions are evaluated, else ``count``."""
    return LabelConvention.TWO_COUNTS if tuple(dims) == (0, 1) else LabelConvention.COUNT


def measures_for(dims: Sequence[int], convention: LabelConvention) -> list[Measure]:
    """The counts to measure for ``dims`` and which label count each is compared with.

    Raises:
        ConfigError: ``dims`` is not (0,), (1,) or (0, 1), or both dims with a one-count convention.
    """
    dims = tuple(dims)
    if dims not in ((0,), (1,), (0, 1)):
        raise ConfigError(f"dims: expected (0,), (1,) or (0, 1), got {dims!r}")
    two = convention is LabelConvention.TWO_COUNTS
    if dims == (0, 1) and not two:
        raise ConfigError(
            f"dim both: expected the two_counts convention ('<components>_<holes>_<id>.<ext>'), "
            f"got {convention.value}"
        )
    measures = []
    if 0 in dims:
        measures += [Measure(f"dim0_conn{c}", 0, c, 0) for c in (4, 8)]
    if 1 in dims:
        measures.append(Measure("dim1", 1, None, 1 if two else 0))
    return measures


def read_mask(path: Path) -> np.ndarray:
    """An image file as 8-bit pixels, ``[H, W]`` or ``[H, W, C]`` (binarise takes channel 0, ``> 128``).

    Raises:
        InputError: the file cannot be read or decoded, or it is a 32-bit/float image.
    """
    image = open_image_file(path)
    if image.mode not in _EIGHT_BIT_MODES:
        image = image.convert("RGBA")  # palette, 1-bit, CMYK, ...: channel 0 becomes red/grey 0-255
    return np.asarray(image)


def evaluate_folder(
    path: str | Path,
    dims: Sequence[int] = (0,),
    convention: LabelConvention | str | None = None,
    classes: Sequence[int] | None = None,
) -> dict:
    """Count metrics of the masks in ``path`` against their file-name labels (module docstring).

    Args:
        path: folder of PNG/JPEG masks (not searched recursively).
        dims: ``(0,)`` components, ``(1,)`` holes, ``(0, 1)`` both (two-count names).
        convention: file-name convention; default ``two_counts`` for both dims, else ``count``.
        classes: classes of the per-class metrics; default: the sorted set of target counts.

    Raises:
        ConfigError: bad dims/convention combination.
        InputError: missing/empty folder, a bad file name, an unreadable image, a non-integer count.
    """
    convention = default_convention(dims) if convention is None else as_convention(convention)
    measures = measures_for(dims, convention)
    index = scan_folder(path, convention, recursive=False)
    true = {m.name: [] for m in measures}
    pred = {m.name: [] for m in measures}
    for file, label in progress(zip(index.files, index.labels), f"evaluating {path}", total=len(index.files)):
        foreground = binarise(read_mask(file))
        for m in measures:
            true[m.name].append(_integer_count(label.counts[m.label_index], file))
            pred[m.name].append(count_mask(foreground, m.dim, m.connectivity or 4))
    return {
        "folder": str(index.root),
        "convention": convention.value,
        "dims": list(dims),
        "n": len(index.files),
        "classes": None if classes is None else [int(k) for k in classes],
        "measures": {m.name: _measure_result(m, true[m.name], pred[m.name], classes) for m in measures},
    }


def flat_metrics(result: dict) -> dict[str, float]:
    """``{MEASURE}_{METRIC}`` floats (``METRIC`` in :data:`FLAT_METRICS`) and ``n`` of an evaluate result."""
    flat = {"n": float(result["n"])}
    for name, measure in result["measures"].items():
        flat.update({f"{name}_{key}": float(measure["metrics"][key]) for key in FLAT_METRICS})
    return flat


def run_evaluate(args: EvaluateArgs) -> int:
    """Evaluate ``args.folder``; print a table or JSON; write JSON to ``args.out`` if given."""
    from raytopo.outputs import check_output, json_with_keys

    classes = None if args.classes is None else parse_classes(args.classes)
    if args.out is not None:
        check_output(args.out, "--out", inputs=[args.folder], overwrite=args.overwrite,
                     owned=json_with_keys("folder", "convention", "dims", "measures"))
    result = evaluate_folder(args.folder, args.dims, args.convention, classes)
    if args.out is not None:
        write_json_atomic(result, args.out)
    print(json.dumps(result, indent=2) if args.as_json else format_result(result))
    return 0


def parse_classes(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``; ConfigError unless it is a comma-separated list of distinct integers."""
    try:
        classes = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ConfigError(f"classes: expected comma-separated integers such as 1,2,3, got {text!r}") from None
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes: expected distinct integers, got {text!r}")
    return classes


def write_json_atomic(document: dict, out: Path) -> Path:
    """Write ``document`` as JSON to a temporary file next to ``out``, then rename it to ``out``."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(document, stream, indent=2)
                stream.write("\n")
            os.replace(staging, out)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise InputError(f"{out}: expected a writable metrics file path ({error.strerror})") from None
    return out


def format_result(result: dict) -> str:
    """A readable report: summary metrics, per-class rows and the count histogram of every measure."""
    lines = [f"{result['folder']}: {result['n']} image(s), {result['convention']} convention"]
    for name, measure in result["measures"].items():
        lines += ["", _title(measure)] + _summary_lines(measure["metrics"])
        lines += _class_lines(measure["metrics"]["per_class"]) + _histogram_lines(measure["histogram"])
    return "\n".join(lines)


def _measure_result(measure: Measure, true: list[int], pred: list[int], classes: Sequence[int] | None) -> dict:
    return {
        "dim": measure.dim,
        "connectivity": measure.connectivity,
        "metrics": asdict(count_metrics(true, pred, classes)),
        "histogram": count_histogram(true, pred),
    }


def _integer_count(value: float, path: Path) -> int:
    if value != int(value):
        raise InputError(f"{path}: expected an integer count in the file name for evaluation, got {value:g}")
    return int(value)


def _title(measure: dict) -> str:
    if measure["dim"] == 1:
        return "dim 1 (holes)"
    return f"dim 0 (components, {measure['connectivity']}-connectivity)"


def _summary_lines(metrics: dict) -> list[str]:
    classes = len(metrics["per_class"])
    rows = [
        ("accuracy", "accuracy", "exact match; ± = support-weighted std of per-class accuracies"),
        ("precision", "precision", f"macro over {classes} class(es) ± std"),
        ("recall", "recall", f"macro over {classes} class(es) ± std"),
        ("f1", "f1", f"macro over {classes} class(es) ± std"),
        ("MAE", "mae", "mean |true - predicted| ± std"),
    ]
    return [f"  {label:<10}{metrics[key]:.4f} ± {metrics[key + '_std']:.4f}   ({note})" for label, key, note in rows]


def _class_lines(per_class: dict) -> list[str]:
    lines = [f"  {'class':>7}{'support':>9}{'accuracy':>10}{'precision':>11}{'recall':>8}{'f1':>8}"]
    for k, row in per_class.items():
        lines.append(
            f"  {k:>7}{int(row['support']):>9}{row['accuracy']:>10.4f}{row['precision']:>11.4f}"
            f"{row['recall']:>8.4f}{row['f1']:>8.4f}"
        )
    return lines


def _histogram_lines(histogram: dict) -> list[str]:
    lines = [f"  {'count':>7}{'true':>7}{'pred':>7}"]
    lines += [f"  {k:>7}{row['true']:>7}{row['pred']:>7}" for k, row in histogram.items()]
    return lines
