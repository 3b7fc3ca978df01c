"""The other seeds' headline claims, measured: the shipped studies run with `raytopo study` (issue 16).

Run:  python bench/studies.py topovae [--images X.npy --labels Y.npy]     (Topo-GEN; 12 min on 2 CPUs)
      python bench/studies.py equivariance [--groups C4,D4,trivial]      (Structure Preserving Diffusion; 53 min)

* ``topovae``: studies/topovae_claim.yaml, VAE vs TopoVAE over 8 seeds on the synthetic garments (or a local
  FashionMNIST export given as an image array and its labels): held-out BCE over steps, at the end, the latent
  organisation by class (k-means NMI), grids at step 50 side by side.
* ``equivariance``: studies/equivariance_claim.yaml once per data group (the glyphs' distribution invariant
  under trivial / C4 / D4; every model is C4), 6 variants x 3 seeds at an equal step budget. Then the cost of
  each mechanism (bench/equivariant.py's interleaved train-step timing) and the **equal-wall-time** comparison:
  variant v gets the steps plain makes in the same time, ``150 x ms(plain) / ms(v)``, and its eval/mmd curve
  (every 50 steps, per seed) is interpolated there, against plain's mmd at step 150.

Each study writes study.md, study.csv, curves.png (and grids) into <storage>/<name>/ and prints its tables.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def run_one(data: dict, root: Path, storage: str | None):
    from raytopo.tune.study import markdown, parse_study, run_study, write_study

    study = parse_study({**data, "storage_path": storage} if storage else data, root=root)
    trials, folder = run_study(study)
    written = write_study(trials, study, folder)
    print(markdown(trials, study))
    print("written:", ", ".join(str(p) for p in written.values()), flush=True)
    return study, trials, folder


def topovae(args: argparse.Namespace) -> None:
    from raytopo.config import load_yaml

    spec = REPO / "studies" / "topovae_claim.yaml"
    data = load_yaml(spec)
    data.setdefault("name", spec.stem)
    if args.images:
        data["fixed"].update({"data.source": "npy", "data.path": str(Path(args.images).resolve()),
                              "data.labels_path": str(Path(args.labels).resolve()) if args.labels else None})
        data["name"] = f"{data['name']}_npy"
    run_one(data, spec.parent, args.storage)


def equivariance(args: argparse.Namespace) -> None:
    from raytopo.config import load_yaml

    spec = REPO / "studies" / "equivariance_claim.yaml"
    results = {}
    for group in args.groups.split(","):
        data = copy.deepcopy(load_yaml(spec))
        data["fixed"]["data.group"] = group
        data["name"] = f"equivariance_{group}"
        results[group] = run_one(data, spec.parent, args.storage)
    from equivariant import cost_tables, parse_args

    costs = cost_tables(parse_args(["--group", "C4", "--repeat", "5"]))
    for group, (study, trials, folder) in results.items():
        table = equal_wall_time(study, trials, costs)
        (folder / "equal_wall_time.md").write_text(table)
        print(f"\n### data group {group}: equal wall time (plain's full budget)\n\n{table}", flush=True)


def equal_wall_time(study, trials, costs: dict[str, float]) -> str:
    """Per variant: the steps it makes in plain's time for the full budget, and its mmd there (mean +- std)."""
    from raytopo.eval.statistics import summarise
    from raytopo.tune.study import curve

    budget = max(study.at_steps)
    lines = ["| variant | train ms/step | x plain | steps in plain's time | mmd there (mean +- std over seeds) |",
             "|---|---|---|---|---|"]
    for variant in study.variants:
        ratio = costs[variant] / costs["plain"]
        steps = budget / ratio
        values = []
        for trial in trials:
            if trial.variant != variant or trial.status != "done":
                continue
            points = sorted(curve(trial.history, "eval/mmd").items())
            xs, ys = [s for s, _ in points], [v for _, v in points]
            if xs and xs[0] <= steps:
                values.append(float(np.interp(steps, xs, ys)))
        summary = summarise(values)
        where = f"{steps:.0f}" if values else f"{steps:.0f} (before the first evaluation)"
        lines.append(f"| {variant} | {costs[variant]:.1f} | {ratio:.2f} | {where} | "
                     f"{summary.mean:.4g} +- {summary.std:.2g} (n={summary.n}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("topovae", "equivariance"))
    parser.add_argument("--storage", default=None, help="where the study folders go (default: the specs')")
    parser.add_argument("--images", default=None, help="topovae: a local FashionMNIST image array (.npy)")
    parser.add_argument("--labels", default=None, help="topovae: its labels (.npy)")
    parser.add_argument("--groups", default="C4,D4,trivial", help="equivariance: the data groups")
    args = parser.parse_args(argv)
    {"topovae": topovae, "equivariance": equivariance}[args.study](args)


if __name__ == "__main__":
    main()
