"""TDN against ADM-T at an equal budget, over seeds, with its CPU-minute budget (the TDN paper's headline claim).

Run:  python bench/reproduction.py                 # 0-dim Shapes from the shipped base, 3 seeds (~35 min, 2 CPUs)
      python bench/reproduction.py --finetune-steps 600 --sampler ddim   # the demo's budget and sampler
      python bench/reproduction.py --from-scratch  # train the 0-dim base too (what `raytopo demo --from-scratch` does)
      python bench/reproduction.py --settings dim0,dim1,both --from-scratch   # + holes and two counts (~3 h)
      python bench/reproduction.py --study         # what drives the gap: one change at a time, seed 0
      python bench/reproduction.py --quick         # a smoke run of everything

The recipe is the demo's (`raytopo.commands.demo`): for each setting an ADM-T base (x0 prediction, learned
variance, lr 5e-4 with warm-up, EMA with warm-up); from it, with the *same* seed, batches, timesteps, noise and
learning rate, ADM-T continues for ``--finetune-steps`` and TDN fine-tunes for as many steps with
weight * L_topo. Both are sampled with the same sampler and seeds (``--per-count`` masks per target count) and
evaluated as the reference does (4-connectivity accuracy, macro F1, MAE). The table gives mean and sample
standard deviation over ``--seeds`` (the seed of the fine-tuning and of the sampling).

Settings: ``dim0`` (components, counts 1-5), ``dim1`` (holes, counts 1-4; TDN's L_topo on dim 1), ``both``
(``u_v`` names: u components of which v hollow, 1 <= v <= u <= 3; L_topo on dims 0 and 1). Every setting is
32 px. Training runs through the production trainer in-process (``ray.num_workers 0``) with the persistence
work in-process too: on 2 cores, actors would only take CPU from the network. CPU minutes = wall minutes x
the torch threads used.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import print_table  # noqa: E402

SETTINGS = {
    "dim0": {"data": {"shapes_dim": "0", "min_count": 1, "max_count": 5}, "dims": [0], "measure": "dim0_conn4"},
    "dim1": {"data": {"shapes_dim": "1", "min_count": 1, "max_count": 4}, "dims": [1], "measure": "dim1"},
    "both": {"data": {"shapes_dim": "both", "convention": "two_counts", "min_count": 1, "max_count": 3},
             "dims": [0, 1], "measure": "dim0_conn4"},
}
COLUMNS = ("accuracy", "f1", "mae", "within1")

# One change at a time against the demo's TDN (weight 1.0, noisy on, selection count, every t): what drives the gap.
STUDY = {
    "selection match": {"selection": "match"},
    "weight 0.1": {"weight": 0.1},
    "weight 3.0": {"weight": 3.0},
    "weight warm-up 300": {"warmup_steps": 300},
    "noisy off": {"noisy": False},
    "t < 500 only": {"max_t": 500},
    "t >= 500 only": {"min_t": 500},
    "min-SNR 1": {"min_snr": 1.0},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="dim0", help="comma-separated: dim0, dim1, both (default dim0)")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning and sampling seeds (default 0,1,2)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the dim0 base too (dim1 and both are always trained: nothing is shipped)")
    parser.add_argument("--base-steps", type=int, default=3000, help="ADM-T base steps when trained here")
    parser.add_argument("--finetune-steps", type=int, default=1200,
                        help="steps of each fine-tuning run (default 1200; the demo uses 600)")
    parser.add_argument("--per-count", type=int, default=40, help="samples per target count")
    parser.add_argument("--sampler", default="ddpm_learned",
                        help="default ddpm_learned (the best counts per cost, docs/tdn.md); the demo uses ddim")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--study", action="store_true", help="the one-change-at-a-time study (seed 0, dim0)")
    parser.add_argument("--only", default=None, help="study: only these variants (';'-separated names)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "reproduction")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    args = parser.parse_args(argv)
    args.settings = [s for s in args.settings.split(",") if s]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"--settings: unknown {sorted(unknown)}; expected some of {', '.join(SETTINGS)}")
    if args.quick:
        args.base_steps, args.finetune_steps, args.per_count, args.sample_steps = 20, 4, 2, 4
        args.seeds = args.seeds[:2]
        args.out = args.out.with_name(args.out.name + "_quick")
    return args


def local(config: dict) -> dict:
    """A demo run config made to run in-process (no Ray workers; persistence in-process)."""
    config = copy.deepcopy(config)
    config["ray"].update({"num_workers": 0, "persistence_actors": 0})
    return config


def with_setting(config: dict, setting: str, steps: int | None = None) -> dict:
    config = copy.deepcopy(config)
    config["data"] = {**config["data"], **SETTINGS[setting]["data"]}
    if "topo" in config["model"]:
        config["model"]["topo"] = {**config["model"]["topo"], "dims": SETTINGS[setting]["dims"]}
    if steps is not None:
        config["train"].update({"steps": steps, "checkpoint_every": steps, "log_every": max(1, steps // 4)})
    return config


def train(config: dict, folder: Path) -> tuple[Path, float]:
    """Train with the production trainer into a fresh ``folder``; (final checkpoint, seconds)."""
    import shutil

    from raytopo.checkpoint import find_latest_checkpoint
    from raytopo.train.config import parse_run_config
    from raytopo.train.trainer import run_training

    config = copy.deepcopy(config)
    config["ray"].update({"storage_path": str(folder.parent), "name": folder.name})
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    run_training(parse_run_config(config))
    seconds = time.perf_counter() - start
    checkpoint = find_latest_checkpoint(folder)
    print(f"[repro] trained {config['family']} {folder.name}: {config['train']['steps']} steps in {seconds:.0f} s",
          flush=True)
    return checkpoint, seconds


def evaluate(checkpoint: Path | str, args: argparse.Namespace, seed: int, folder: Path) -> tuple[dict, float]:
    """The family's evaluation of ``per_count`` samples per target count; also writes a grid."""
    from raytopo.commands.sample import write_grid
    from raytopo.families.sampling import SamplerSettings
    from raytopo.train.loading import load_model_for_sampling

    start = time.perf_counter()
    family, run, model = load_model_for_sampling(checkpoint)
    settings = SamplerSettings(name=args.sampler, steps=args.sample_steps, seed=1000 * seed)
    images, cond = family.sample_targets(model, run, settings, args.per_count, batch_size=100)
    write_grid(images[:: max(1, args.per_count // 4)], folder)
    return family.evaluate(images, cond, family.count_dims(run)), time.perf_counter() - start


def base_for(setting: str, args: argparse.Namespace, budget: dict) -> Path | str:
    from raytopo.commands.demo import BASE_NAME, base_config

    if setting == "dim0" and not args.from_scratch:
        return f"pretrained:{BASE_NAME}"
    config = with_setting(local(base_config(steps=args.base_steps)), setting)
    checkpoint, seconds = train(config, args.out / setting / "base")
    budget["base training"] = budget.get("base training", 0.0) + seconds
    return checkpoint


def compare(setting: str, base: Path | str, args: argparse.Namespace, budget: dict) -> dict[str, list[dict]]:
    """ADM-T continued vs TDN fine-tuned from ``base`` for every seed: {model: [metrics per seed]}."""
    from raytopo.commands.demo import finetune_config

    results: dict[str, list[dict]] = {"ADM-T": [], "TDN": []}
    for seed in args.seeds:
        for label, family in (("ADM-T", "adm_t"), ("TDN", "tdn")):
            config = with_setting(local(finetune_config(args.out, family, args.finetune_steps, str(base), seed)),
                                  setting)
            folder = args.out / setting / f"{family}_seed{seed}"
            checkpoint, seconds = train(config, folder)
            metrics, eval_seconds = evaluate(checkpoint, args, seed, folder / "samples")
            budget["fine-tuning"] = budget.get("fine-tuning", 0.0) + seconds
            budget["sampling + evaluation"] = budget.get("sampling + evaluation", 0.0) + eval_seconds
            results[label].append(metrics)
            print(f"[repro] {setting} {label} seed {seed}: "
                  + json.dumps({k: round(v, 3) for k, v in metrics.items()}), flush=True)
    return results


def study(base: Path | str, args: argparse.Namespace, budget: dict) -> dict[str, dict]:
    """TDN with one change at a time (seed 0) next to the demo's TDN and ADM-T."""
    from raytopo.commands.demo import TOPO, finetune_config

    rows = {}
    seed = args.seeds[0]
    variants = {"ADM-T": None, "TDN (demo recipe)": {}, **STUDY}
    if args.only:
        variants = {name: variants[name] for name in args.only.split(";")}
    for name, change in variants.items():
        family = "adm_t" if change is None else "tdn"
        config = local(finetune_config(args.out, family, args.finetune_steps, str(base), seed))
        if change is not None:
            config["model"]["topo"] = {**TOPO, **change}
        folder = args.out / "study" / "".join(c if c.isalnum() else "_" for c in name.lower())
        checkpoint, seconds = train(config, folder)
        rows[name], eval_seconds = evaluate(checkpoint, args, seed, folder / "samples")
        budget["study"] = budget.get("study", 0.0) + seconds + eval_seconds
        print(f"[repro] study {name}: " + json.dumps({k: round(v, 3) for k, v in rows[name].items()}), flush=True)
    return rows


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} +- {spread:.3f}"


def print_comparison(setting: str, results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    measure = SETTINGS[setting]["measure"]
    keys = [f"{measure}_{c}" for c in COLUMNS] + ["saturated"]
    rows = [[label] + [summary([m[k] for m in runs]) for k in keys] for label, runs in results.items()]
    gains = [t[f"{measure}_accuracy"] - a[f"{measure}_accuracy"] for a, t in zip(results["ADM-T"], results["TDN"])]
    rows.append(["TDN - ADM-T accuracy", summary(gains)] + [""] * (len(keys) - 1))
    extra = []
    if setting == "both":
        keys_holes = [f"dim1_{c}" for c in COLUMNS]
        extra = [[f"{label} (holes)"] + [summary([m[k] for m in runs]) for k in keys_holes] + [""]
                 for label, runs in results.items()]
    print_table(f"{setting}: {args.per_count} samples per count, {args.sampler} {args.sample_steps}; seeds "
                f"{args.seeds}; {args.finetune_steps} fine-tuning steps each from one base (mean +- std over seeds)",
                ["model"] + [k.replace(f"{measure}_", "") for k in keys], rows + extra)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    budget: dict[str, float] = {}
    import ray

    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    try:
        if args.study:
            rows = study(base_for("dim0", args, budget), args, budget)
            keys = [f"dim0_conn4_{c}" for c in COLUMNS] + ["saturated"]
            print_table(f"What drives the gap (dim0, seed {args.seeds[0]}, {args.finetune_steps} steps each)",
                        ["variant"] + [k.replace("dim0_conn4_", "") for k in keys],
                        [[name] + [m[k] for k in keys] for name, m in rows.items()])
        else:
            for setting in args.settings:
                print_comparison(setting, compare(setting, base_for(setting, args, budget), args, budget), args)
    finally:
        ray.shutdown()
    total = time.perf_counter() - started
    print("\nbudget: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in budget.items())
          + f"; total {total / 60:.1f} min wall = {total / 60 * args.threads:.0f} CPU-minutes ({args.threads} threads)")


if __name__ == "__main__":
    main()
