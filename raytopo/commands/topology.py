"""`raytopo topology IMAGE`: Betti numbers and the most persistent features of one image."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytopo.errors import InputError
from raytopo.topology.betti import betti_numbers
from raytopo.topology.cubical import cubical_persistence
from raytopo.topology.diagrams import Diagram


@dataclass(frozen=True)
class TopologyArgs:
    image: Path
    dims: tuple[int, ...] = (0, 1)
    top: int = 5
    as_json: bool = False
    plot: Path | None = None
    overwrite: bool = False


def read_grayscale(path: Path) -> np.ndarray:
    """An image file as a float array in [0, 1]: channel 0 of the 8-bit image / 255, as the TDN evaluation
    (the same decoding and depth handling as training: :func:`raytopo.data.folder.open_image`)."""
    from raytopo.commands.evaluate import read_mask

    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    array = read_mask(path)
    if array.ndim == 3:
        array = array[..., 0]
    return array.astype(np.float64) / 255.0


def topology_report(image: np.ndarray, dims: tuple[int, ...], top: int) -> tuple[dict, list[Diagram]]:
    """Betti numbers of the binarised image and the ``top`` most persistent features per dimension.

    Persistence uses the superlevel filtration (bright = foreground) with the vertex construction, as the
    TDN loss and evaluation do.
    """
    betti = betti_numbers(image > 0.5, connectivity=4)
    diagrams = cubical_persistence(image, maxdim=max(dims), filtration="superlevel")
    report: dict = {"betti": {"components": betti.components, "holes": betti.holes}, "features": {}}
    for dim in dims:
        strongest = diagrams[dim].sorted_by_persistence().select(np.arange(min(top, len(diagrams[dim]))))
        report["features"][f"H{dim}"] = [
            {"birth": float(b), "death": (float(d) if np.isfinite(d) else None), "persistence": float(p),
             "birth_pixel": _pixel(c, image.shape), "death_pixel": _pixel(e, image.shape)}
            for b, d, p, c, e in zip(strongest.births, strongest.deaths, strongest.persistence,
                                     strongest.birth_cells, strongest.death_cells)
        ]
    return report, [diagrams[dim] for dim in dims]


def run_topology(args: TopologyArgs) -> int:
    if args.plot is not None:
        from raytopo.outputs import check_output, png_by_raytopo

        check_output(args.plot, "--plot", inputs=[args.image], overwrite=args.overwrite, owned=png_by_raytopo)
    image = read_grayscale(args.image)
    report, diagrams = topology_report(image, args.dims, args.top)
    report["image"] = str(args.image)
    if args.plot is not None:
        from raytopo.eval.plots import save_diagram_plot

        report["plot"] = str(save_diagram_plot(diagrams, args.plot, title=args.image.name))
    print(json.dumps(report, indent=2) if args.as_json else _format(report))
    return 0


def _pixel(flat_index: int, shape: tuple[int, int]) -> list[int] | None:
    return None if flat_index < 0 else [int(v) for v in np.unravel_index(flat_index, shape)]


def _format(report: dict) -> str:
    betti = report["betti"]
    lines = [f"{report['image']}: {betti['components']} component(s), {betti['holes']} hole(s)"]
    for name, features in report["features"].items():
        lines.append(f"  most persistent {name} features (birth -> death, persistence):")
        for feature in features:
            death = "never" if feature["death"] is None else f"{feature['death']:.3f}"
            lines.append(f"    {feature['birth']:.3f} -> {death}  ({feature['persistence']:.3f})")
    if "plot" in report:
        lines.append(f"  diagram plot: {report['plot']}")
    return "\n".join(lines)
