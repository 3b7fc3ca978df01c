"""Which sampler gives the best topology accuracy per evaluation cost, on trained ADM-T / TDN checkpoints.

Run:  python bench/sampler_topology.py CHECKPOINT [CHECKPOINT ...] [--per-count 40] [--threads 2]
      e.g. the demo's fine-tuned models: python bench/sampler_topology.py runs/demo/adm_t runs/demo/tdn

A CHECKPOINT is a checkpoint directory, a run folder (its newest checkpoint) or ``pretrained:<name>``.

Every checkpoint is sampled with every (sampler, steps) of ``--grid`` from the same seeds and evaluated by its
family (accuracy, macro F1, MAE, saturated pixels). The cost is the number of denoiser calls (NFE) and the wall
time per image, with the ``ddim 50`` row of each checkpoint as the baseline of the time ratio (measured in the
same run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import print_table  # noqa: E402

def resolve_checkpoint(location: str) -> str | Path:
    """A checkpoint directory for ``location``: itself, ``pretrained:<name>``, or a run folder's newest checkpoint."""
    from raytopo.checkpoint import find_latest_checkpoint

    path = Path(location)
    if location.startswith("pretrained:") or (path / "config.json").exists():
        return location
    newest = find_latest_checkpoint(path)
    if newest is None:
        raise SystemExit(f"{location}: expected a checkpoint or run directory, or pretrained:<name>")
    return newest


GRID = "ddim:25,ddim:50,ddim:100,ddpm:50,ddpm:250,ddpm_learned:50,ddpm_learned:250,heun:25,dpmpp_2m:25"


def main(argv: list[str] | None = None) -> None:
    from raytopo.train.loading import load_model_for_sampling
    from raytopo.diffusion.samplers import denoiser_calls
    from raytopo.families.sampling import SamplerSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint or run directories, or pretrained:<name>")
    parser.add_argument("--grid", default=GRID, help=f"sampler:steps,... (default {GRID})")
    parser.add_argument("--per-count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = [(name, int(steps)) for name, steps in (item.split(":") for item in args.grid.split(","))]
    rows = []
    for checkpoint in map(resolve_checkpoint, args.checkpoints):
        family, run, model = load_model_for_sampling(checkpoint)
        measure = "dim1" if family.count_dims(run) == (1,) else "dim0_conn4"
        timed = []
        for name, steps in grid:
            settings = SamplerSettings(name=name, steps=steps, seed=args.seed)
            start = time.perf_counter()
            images, cond = family.sample_targets(model, run, settings, args.per_count, batch_size=100)
            per_image = (time.perf_counter() - start) / len(images)
            metrics = family.evaluate(images, cond, family.count_dims(run))
            timed.append((name, steps, metrics, per_image))
            print(f"{checkpoint}: {name} {steps}: accuracy {metrics[measure + '_accuracy']:.3f}, "
                  f"{per_image * 1e3:.1f} ms/image", flush=True)
        baseline = next((t for n, s, _, t in timed if (n, s) == ("ddim", 50)), timed[0][3])
        for name, steps, metrics, per_image in timed:
            rows.append([f"{run.family} {Path(checkpoint).parent.name}", f"{name} {steps}", denoiser_calls(name, steps),
                         metrics[f"{measure}_accuracy"], metrics[f"{measure}_f1"], metrics[f"{measure}_mae"],
                         metrics["saturated"], per_image * 1e3, per_image / baseline])
    print_table(f"Samplers on trained checkpoints: {args.per_count} samples per count, seed {args.seed}, "
                f"{args.threads} threads",
                ["checkpoint", "sampler", "NFE", "accuracy", "macro F1", "MAE", "saturated", "ms / image",
                 "time vs ddim 50"], rows)


if __name__ == "__main__":
    main()
