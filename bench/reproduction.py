"""A small TDN reproduction: ADM-T vs TDN with the same budget on 0-dim Shapes (counts 1-5).

Run:  python bench/reproduction.py [--quick] [--selection match|count] [--noisy]
      (full run: nohup python bench/reproduction.py > bench/out/reproduction.log 2>&1 &)

The reference recipe (tdn.md section 1), scaled down to a 2-core CPU:

1. ``adm_t`` trained from scratch for ``--pretrain-steps`` (stands in for ADM -> ADM-T);
2. from that checkpoint (``init_from``, EMA weights), with the *same* seed, batches, timesteps and noise:
   * ``adm_t`` continues for ``--finetune-steps``        -> the ADM-T row;
   * ``tdn`` fine-tunes for ``--finetune-steps``         -> the TDN row (only difference: + weight * L_topo);
3. each checkpoint is sampled (DDIM, ``raytopo sample`` code path: `generate` + `write_samples`) for every
   count 1..5 and evaluated (`evaluate_folder`, the reference metrics: accuracy, macro F1 over the classes,
   MAE, with 4- and 8-connectivity).

Training goes through the production trainer (`run_training`, Ray Train in-process: ``ray.num_workers 0``).

weight_topo at 32 px: the reference uses 1e-5 at 256 px. L_simple is a *mean* over the H*W pixels, L_topo a
*sum* over a few critical pixels, so the gradient that one critical pixel receives from L_topo, relative to the
gradient one pixel receives from L_simple, is weight * H * W. Keeping that ratio (1e-5 * 65536 = 0.66) at
32 px gives 1e-5 * (256/32)^2 = 6.4e-4, the default here.

Persistence runs in-process (``--actors 0``): at 32 px one image costs well under a millisecond
(measurements.md), and on a 2-core box actors would only take CPU from the training process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import print_table  # noqa: E402

COUNTS = (1, 2, 3, 4, 5)
METRIC_COLUMNS = [(f"dim0_conn{c}_{m}", f"{m} {c}-conn") for c in (4, 8) for m in ("accuracy", "f1", "mae")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image size in pixels")
    parser.add_argument("--channels", type=int, default=32, help="UNet model_channels")
    parser.add_argument("--res-blocks", type=int, default=1, help="UNet num_res_blocks")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-images", type=int, default=4000, help="size of the synthetic Shapes training set")
    parser.add_argument("--pretrain-steps", type=int, default=2500, help="ADM-T steps from scratch (stage 1)")
    parser.add_argument("--finetune-steps", type=int, default=700, help="steps of each stage-2 run (same budget)")
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate from scratch")
    parser.add_argument("--finetune-lr", type=float, default=1e-4, help="learning rate of both stage-2 runs")
    parser.add_argument("--ema-rate", type=float, default=0.995)
    parser.add_argument("--weight-topo", type=float, default=6.4e-4, help="lambda of L_topo (see module doc)")
    parser.add_argument("--selection", choices=("match", "count"), default="match")
    parser.add_argument("--noisy", action=argparse.BooleanOptionalAction, default=False,
                        help="denoise unmatched features too (reference README: off)")
    parser.add_argument("--actors", type=int, default=0, help="persistence actors (0: in-process)")
    parser.add_argument("--per-count", type=int, default=40, help="samples per target count")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (use 1 when the box is oversubscribed: 2 threads then thrash)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "reproduction")
    parser.add_argument("--reuse-pretrain", action="store_true", help="reuse an existing stage-1 checkpoint")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.finetune_steps, args.per_count, args.sample_steps = 20, 10, 2, 5
        args.num_images = 64
        args.out = args.out.with_name(args.out.name + "_quick")
    return args


def run_config(args: argparse.Namespace, family: str, name: str, steps: int, lr: float, init_from: str | None):
    """A validated RunConfig: identical for ADM-T and TDN apart from the family (and the topo settings)."""
    from raytopo.train.config import parse_run_config

    model = {"unet": {"model_channels": args.channels, "num_res_blocks": args.res_blocks,
                      "attention_resolutions": [8], "num_heads": 1, "use_scale_shift_norm": False}}
    if family == "tdn":
        model["topo"] = {"weight": args.weight_topo, "dims": [0], "birth": True, "death": True,
                         "noisy": args.noisy, "selection": args.selection}
    return parse_run_config({
        "family": family,
        "model": model,
        "data": {"source": "shapes", "image_size": args.size, "shapes_dim": "0", "num_images": args.num_images,
                 "min_count": COUNTS[0], "max_count": COUNTS[-1], "seed": args.seed},
        "train": {"steps": steps, "batch_size": args.batch, "lr": lr, "ema_rate": args.ema_rate,
                  "seed": args.seed, "log_every": max(1, steps // 10), "checkpoint_every": steps},
        "ray": {"num_workers": 0, "persistence_actors": args.actors, "storage_path": str(args.out / "runs"),
                "name": name},
        "init_from": init_from,
    })


def train(run) -> Path:
    """Train ``run`` with the production trainer; returns its final checkpoint directory."""
    from raytopo.train.checkpoint import find_latest_checkpoint
    from raytopo.train.trainer import run_training

    import shutil

    shutil.rmtree(run.run_dir, ignore_errors=True)  # a stale run would be picked up as "latest"
    start = time.perf_counter()
    outcome = run_training(run)
    checkpoint = find_latest_checkpoint(run.run_dir) or outcome.checkpoint
    print(f"[repro] trained {run.family} ({run.ray.name}) for {run.train.steps} steps in "
          f"{time.perf_counter() - start:.0f} s -> {checkpoint}", flush=True)
    return Path(checkpoint)


def sample_and_evaluate(checkpoint: Path, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """`raytopo sample` (DDIM, per count) into ``folder``, then `raytopo evaluate --dim 0` of it."""
    import shutil

    from raytopo.commands.evaluate import evaluate_folder, flat_metrics
    from raytopo.commands.sample import generate, load_model_for_sampling, write_grid, write_samples
    from raytopo.families.sampling import SamplerSettings

    start = time.perf_counter()
    family, run, model = load_model_for_sampling(checkpoint)
    targets = [(float(c),) for c in COUNTS for _ in range(args.per_count)]
    settings = SamplerSettings(name="ddim", steps=args.sample_steps, seed=args.seed)
    with torch.no_grad():
        images = generate(family, run, model, targets, settings, batch_size=50)
    shutil.rmtree(folder, ignore_errors=True)
    write_samples(images, targets, folder)
    write_grid(images, folder)
    result = evaluate_folder(folder, dims=(0,), classes=COUNTS)
    print(f"[repro] sampled and evaluated {len(targets)} masks of {checkpoint.name} in "
          f"{time.perf_counter() - start:.0f} s -> {folder}", flush=True)
    return {**flat_metrics(result), "histogram": result["measures"]["dim0_conn4"]["histogram"]}


def loss_balance(checkpoint: Path, args: argparse.Namespace, batches: int = 4) -> dict[str, float]:
    """L_simple vs weight * L_topo at ``checkpoint`` on training batches: values and gradient norms.

    Shows whether the topology term is large enough to matter and that its gradient reaches the model.
    """
    from raytopo.families.base import StepContext, resolve_terms
    from raytopo.parallel.pool import PersistencePool, PoolConfig
    from raytopo.registry import get_family
    from raytopo.train.data import in_memory_arrays
    from raytopo.train.loop import initialise_from

    run = run_config(args, "tdn", "balance", 1, args.finetune_lr, str(checkpoint))
    family = get_family("tdn")
    model = family.build(run)
    initialise_from(model, str(checkpoint))
    arrays = in_memory_arrays(run.data)
    pool = PersistencePool(PoolConfig(num_actors=0))
    ctx = StepContext(step=0, device=torch.device("cpu"), pool=pool, generator=torch.Generator().manual_seed(1),
                      extras=family.setup(run))
    sums = {"mse": 0.0, "vb": 0.0, "topo": 0.0, "grad_simple": 0.0, "grad_topo": 0.0, "topo_nonzero": 0.0}
    for k in range(batches):
        rows = slice(k * args.batch, (k + 1) * args.batch)
        batch = {key: torch.from_numpy(value[rows]) for key, value in arrays.items()}
        terms = resolve_terms(family.losses(model, batch, ctx))
        simple = terms["mse"].mean() + terms["vb"].mean()
        topo = args.weight_topo * terms["topo"].mean()
        sums["grad_simple"] += _grad_norm(model, simple, retain=True)
        sums["grad_topo"] += _grad_norm(model, topo, retain=False)
        sums["topo_nonzero"] += float((terms["topo"] > 0).float().mean())
        for name in ("mse", "vb", "topo"):
            sums[name] += float(terms[name].detach().mean())
    return {name: value / batches for name, value in sums.items()}


def _grad_norm(model: torch.nn.Module, loss: torch.Tensor, retain: bool) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def print_results(results: dict[str, dict], args: argparse.Namespace) -> None:
    rows = [[name] + [metrics[key] for key, _ in METRIC_COLUMNS] for name, metrics in results.items()]
    adm, tdn = results["ADM-T"], results["TDN"]
    rows.append(["ratio TDN / ADM-T"] + [_ratio(tdn[key], adm[key]) for key, _ in METRIC_COLUMNS])
    print_table(
        f"0-dim Shapes {args.size} px, counts 1-5, {args.per_count} samples per count (DDIM {args.sample_steps}); "
        f"both rows: {args.pretrain_steps} ADM-T steps + {args.finetune_steps} fine-tuning steps "
        f"(TDN: weight {args.weight_topo:g}, selection {args.selection}, noisy {'on' if args.noisy else 'off'})",
        ["model"] + [label for _, label in METRIC_COLUMNS], rows,
    )
    print("\nCount histograms (4-connectivity), predicted counts per model:")
    for name, metrics in results.items():
        histogram = {k: v["pred"] for k, v in metrics["histogram"].items()}
        print(f"  {name:<22} {histogram}")


def _ratio(numerator: float, denominator: float) -> float | str:
    return numerator / denominator if denominator else "inf"


def print_balance(balance: dict[str, dict], args: argparse.Namespace) -> None:
    rows = []
    for name, b in balance.items():
        rows.append([name, b["mse"], b["vb"], b["topo"], args.weight_topo * b["topo"], b["topo_nonzero"],
                     b["grad_simple"], b["grad_topo"], b["grad_topo"] / max(b["grad_simple"], 1e-12)])
    print_table(
        "Loss balance on training batches (t uniform): L_topo is the per-sample sum over critical pixels",
        ["checkpoint", "L_mse", "L_vb", "L_topo", "weight*L_topo", "frac. samples with L_topo>0",
         "|grad L_simple|", "|grad weight*L_topo|", "grad ratio topo/simple"], rows,
    )


def main(argv: list[str] | None = None) -> None:
    import ray

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    print(f"[repro] settings: {json.dumps({k: str(v) for k, v in vars(args).items()})}", flush=True)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pretrain = run_config(args, "adm_t", "adm_t_pretrain", args.pretrain_steps, args.lr, None)
        base = _reuse(pretrain) if args.reuse_pretrain else None
        base = base or train(pretrain)
        adm_t = train(run_config(args, "adm_t", "adm_t_finetune", args.finetune_steps, args.finetune_lr, str(base)))
        tdn = train(run_config(args, "tdn", "tdn_finetune", args.finetune_steps, args.finetune_lr, str(base)))
    finally:
        ray.shutdown()
    checkpoints = {"ADM-T (start, stage 1)": base, "ADM-T": adm_t, "TDN": tdn}
    results = {name: sample_and_evaluate(path, args.out / "samples" / _slug(name), args)
               for name, path in checkpoints.items()}
    balance = {"ADM-T start (stage 1)": loss_balance(base, args), "TDN end": loss_balance(tdn, args)}
    print_results(results, args)
    print_balance(balance, args)
    print(f"\n[repro] total {time.perf_counter() - started:.0f} s; samples and grids under {args.out / 'samples'}")


def _reuse(run) -> Path | None:
    from raytopo.train.checkpoint import find_latest_checkpoint

    found = find_latest_checkpoint(run.run_dir)
    if found is not None:
        print(f"[repro] reusing stage-1 checkpoint {found}", flush=True)
    return found


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


if __name__ == "__main__":
    main()
