"""Benchmark of the ``equivariant`` family: the cost of each equivariance mechanism against the plain UNet, and
the equivariance it buys after the same training budget.

Run:  python bench/equivariant.py [--quick] [--group C4] [--size 16] [--steps 300] [--device cpu|cuda]
      (full run: nohup python bench/equivariant.py > bench/out/equivariant.log 2>&1 &)

1. Cost (same UNet hyper-parameters, batch and images for every variant; timed round-robin, interleaved):
   * one production `train_step` (forward, backward, AdamW) of ``plain`` (mechanism none, no regulariser: the
     baseline), ``kernel``, ``symmetric``, ``group`` (equivariant layers) and ``regulariser`` (plain + the EMA
     target's extra forward pass);
   * sampling time per image (heun, ``--sample-steps``) of the same models, and of the plain model with frame
     averaging (``averaging``: |G| denoiser evaluations per step).
2. Equivariance after the same budget: ``plain``, ``regulariser`` (weight 1) and ``kernel`` trained for
   ``--steps`` with the production trainer (local mode, same seed and batches), then `evaluate_model` with a
   deterministic sampler: the network's relative equivariance error on noisy held-out glyphs (``net_eqv_err``),
   the sampler's (``sampler_eqv_err``), and the distribution metrics (MMD^2, sliced W2, invariance gap). The
   frame-averaged sampler of the plain model is evaluated from the plain checkpoint.

Everything is printed with ratios against ``plain`` measured in the same run; files go only to bench/out.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import interleaved_medians, print_table  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
MECHANISM_VARIANTS = {
    "plain": {"mechanism": "none"},
    "kernel": {"mechanism": "kernel"},
    "symmetric": {"mechanism": "symmetric"},
    "group": {"mechanism": "group"},
    "regulariser": {"mechanism": "none", "regulariser": {"weight": 1.0}},
}
TRAINED_VARIANTS = ("plain", "regulariser", "kernel")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", choices=("Z2", "C4", "D4"), default="C4")
    parser.add_argument("--size", type=int, default=16, help="image size in pixels")
    parser.add_argument("--channels", type=int, default=32, help="UNet model_channels")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each compared model")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sample-steps", type=int, default=10, help="heun steps when timing sampling")
    parser.add_argument("--eval-images", type=int, default=128, help="generated images for the distribution metrics")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny budget everywhere (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeat, args.sample_steps, args.eval_images, args.batch = 20, 2, 3, 16, 8
    return args


def run_config(args: argparse.Namespace, name: str, storage: Path, **model) -> dict:
    """The plain run config of one variant (configs/equivariant.yaml's network, scaled by the flags)."""
    return {
        "family": "equivariant",
        "model": {"unet": {"model_channels": args.channels, "num_res_blocks": 1, "channel_mult": [1, 2],
                           "attention_resolutions": []},
                  "group": args.group, **model},
        "data": {"source": "glyphs", "group": args.group, "image_size": args.size, "num_images": 2048},
        "train": {"steps": args.steps, "batch_size": args.batch, "lr": args.lr, "ema_rate": 0.99,
                  "log_every": max(1, args.steps // 10), "checkpoint_every": args.steps},
        "ray": {"num_workers": 0, "persistence_actors": 0, "use_gpu": args.device != "cpu",
                "storage_path": str(storage), "name": name},
    }


# --- 1. cost ----------------------------------------------------------------------------------------------------


def cost_tables(args: argparse.Namespace) -> dict[str, float]:
    """Print the cost table; return the median train-step ms of every variant (``averaging`` trains as plain)."""
    from raytopo.families.base import StepContext
    from raytopo.families.sampling import SamplerSettings
    from raytopo.registry import get_family
    from raytopo.train.config import parse_run_config
    from raytopo.data.sources import in_memory_arrays
    from raytopo.train.step import train_step

    family = get_family("equivariant")
    device = torch.device(args.device)
    runs, models, steps = {}, {}, []
    batch = None
    for name, model in MECHANISM_VARIANTS.items():
        run = parse_run_config(run_config(args, name, OUT / "equivariant_runs", **model))
        torch.manual_seed(0)
        runs[name], models[name] = run, family.build(run).to(device)
        if batch is None:
            batch = {"image": torch.from_numpy(in_memory_arrays(run.data)["image"][:args.batch]).to(device)}
        steps.append(_step_fn(family, models[name], run, batch, device, StepContext, train_step))
    train_ms = interleaved_medians(steps, repeat=args.repeat)

    settings = SamplerSettings(name="heun", steps=args.sample_steps)
    runs["averaging"] = parse_run_config(run_config(args, "averaging", OUT / "equivariant_runs", mechanism="none",
                                                    averaging=True))
    models["averaging"] = models["plain"]
    samplers = [lambda n=n: family.sample(models[n], runs[n], args.batch, {}, settings) for n in runs]
    sample_ms = interleaved_medians(samplers, repeat=max(2, args.repeat // 2))
    names = list(runs)
    parameters = {n: sum(p.numel() for p in models[n].net.parameters()) for n in names}
    rows = [[n, parameters[n], *(_with_ratio(train_ms, i) if i < len(train_ms) else ["-", "-"]),
             *_with_ratio([s / args.batch for s in sample_ms], i)] for i, n in enumerate(names)]
    print_table(f"Cost on {args.device}: group {args.group}, {args.size} px, batch {args.batch}, "
                f"model_channels {args.channels}, heun {args.sample_steps} steps",
                ["variant", "parameters", "train step ms", "x plain", "sample ms / image", "x plain"], rows)
    return {**dict(zip(MECHANISM_VARIANTS, train_ms)), "averaging": train_ms[0]}


def _step_fn(family, model, run, batch, device, context_type, train_step):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = context_type(step=0, device=device, generator=torch.Generator(device=device), extras=family.setup(run))
    weights = family.loss_weights(run)

    def step() -> None:
        ctx.step += 1
        ctx.generator.manual_seed(ctx.step)
        train_step(model, family, batch, ctx, weights, optimizer, 1, 1.0)

    return step


def _with_ratio(values: list[float], index: int) -> list[float]:
    return [values[index], values[index] / values[0]]


# --- 2. equivariance after the same budget -------------------------------------------------------------------------


def quality_table(args: argparse.Namespace) -> None:
    import ray

    from raytopo.train.loading import load_model_for_sampling
    from raytopo.families.sampling import SamplerSettings
    from raytopo.train.config import parse_run_config
    from raytopo.train.trainer import run_training

    storage = OUT / ("equivariant_runs_quick" if args.quick else "equivariant_runs")
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    settings = SamplerSettings(name="heun", steps=args.sample_steps, seed=1)
    results, seconds = {}, {}
    try:
        for name in TRAINED_VARIANTS:
            run = parse_run_config(run_config(args, name, storage, **MECHANISM_VARIANTS[name]))
            start = time.perf_counter()
            outcome = run_training(run)
            seconds[name] = time.perf_counter() - start
            family, trained_run, model = load_model_for_sampling(outcome.checkpoint)
            results[name] = family.evaluate_model(model, trained_run, settings, args.eval_images, 32)
            if name == "plain":
                averaged = dataclasses.replace(trained_run, model={**trained_run.model, "averaging": True})
                results["plain + averaging"] = family.evaluate_model(model, averaged, settings, args.eval_images, 32)
                seconds["plain + averaging"] = seconds[name]
    finally:
        ray.shutdown()
    keys = ("net_eqv_err", "sampler_eqv_err", "mmd", "swd", "invariance_gap")
    base = results["plain"]
    rows = [[name, seconds[name], *(value for key in keys for value in (r[key], _ratio(r[key], base[key])))]
            for name, r in results.items()]
    header = ["model", "train s"] + [h for key in keys for h in (key, "x plain")]
    print_table(f"After {args.steps} steps on {args.group} glyphs ({args.size} px, batch {args.batch}); "
                f"evaluation: {args.eval_images} images, heun {args.sample_steps} steps", header, rows)


def _ratio(value: float, baseline: float) -> float | str:
    return value / baseline if baseline else "-"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    OUT.mkdir(exist_ok=True)
    torch.manual_seed(0)
    cost_tables(args)
    quality_table(args)


if __name__ == "__main__":
    main()
