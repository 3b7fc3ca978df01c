"""`raytopo demo`: the whole TDN pipeline on a local Ray cluster in a few minutes on a laptop.

1. start (or attach to) Ray; the Shapes data (0-dim, counts 1-5, 32 px) is generated in memory;
2. train ADM-T on Ray Train (one TorchTrainer worker);
3. from that checkpoint, with identical budgets: continue ADM-T, and fine-tune TDN (ADM-T + L_topo, the
   reference's staged recipe) with persistence diagrams computed by Ray actors;
4. sample every count from both, evaluate, print a table of topology accuracy, and where the TensorBoard
   logs and sample grids are.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytopo.errors import InputError


@dataclass(frozen=True)
class DemoArgs:
    out: Path = Path("runs/demo")
    address: str | None = None
    num_actors: int = 2
    pretrain_steps: int = 400
    finetune_steps: int = 200
    per_count: int = 8


def demo_config(out: Path, name: str, family: str, steps: int, actors: int, init_from: Path | None) -> dict[str, Any]:
    """A small run config that trains in minutes on 2 CPU cores."""
    return {
        "family": family,
        "model": {
            "unet": {"model_channels": 32, "num_res_blocks": 1, "attention_resolutions": [8], "dropout": 0.0},
            "diffusion": {"steps": 1000, "schedule": "cosine"},
            "topo": {"weight": 1.0e-3, "dims": [0], "selection": "match", "noisy": True},
        },
        "data": {"source": "shapes", "image_size": 32, "num_images": 2048, "min_count": 1, "max_count": 5},
        "train": {"steps": steps, "batch_size": 16, "microbatches": 2 if family == "tdn" else 1, "lr": 2.0e-4,
                  "ema_rate": 0.995, "log_every": 25, "checkpoint_every": steps, "sample_every": steps,
                  "sample_steps": 25},
        "ray": {"num_workers": 1, "cpus_per_worker": 1.0, "persistence_actors": actors,
                "cpus_per_actor": 1.0 / max(actors, 1), "storage_path": str(out), "name": name},
        "init_from": str(init_from) if init_from else None,
    }


def run_demo(args: DemoArgs) -> int:
    from raytopo.commands.evaluate import evaluate_folder, flat_metrics
    from raytopo.commands.sample import generate, load_model_for_sampling, write_grid, write_samples
    from raytopo.families.sampling import SamplerSettings
    from raytopo.train.config import parse_run_config
    from raytopo.train.trainer import ensure_ray, run_training

    if args.num_actors < 0:
        raise InputError(f"--actors: expected >= 0, got {args.num_actors}")
    out = _fresh_demo_folder(args.out.expanduser().resolve())
    ensure_ray(args.address)
    started = time.perf_counter()

    def train(name: str, family: str, steps: int, init_from: Path | None) -> Path:
        _say(f"training {name} ({family}, {steps} steps)")
        run = parse_run_config(demo_config(out, name, family, steps, args.num_actors, init_from))
        outcome = run_training(run)
        return outcome.checkpoint

    base = train("adm_t_pretrain", "adm_t", args.pretrain_steps, None)
    checkpoints = {
        "ADM-T": train("adm_t", "adm_t", args.finetune_steps, base),
        "TDN": train("tdn", "tdn", args.finetune_steps, base),
    }
    targets = [(float(c),) for c in range(1, 6) for _ in range(args.per_count)]
    rows = {}
    for label, checkpoint in checkpoints.items():
        family, run, model = load_model_for_sampling(checkpoint)
        images = generate(family, run, model, targets, SamplerSettings(name="ddim", steps=50), batch_size=20)
        folder = out / "samples" / label.lower().replace("-", "_")
        write_samples(images, targets, folder)
        write_grid(images, folder)
        rows[label] = flat_metrics(evaluate_folder(folder, dims=(0,)))
    _print_table(rows)
    _say(f"finished in {time.perf_counter() - started:.0f} s")
    print(f"TensorBoard:  tensorboard --logdir {out}")
    print(f"sample grids: {out / 'samples' / 'adm_t' / 'grid' / 'grid.png'}, "
          f"{out / 'samples' / 'tdn' / 'grid' / 'grid.png'}")
    return 0


_MARKER = ".raytopo-demo"


def _fresh_demo_folder(out: Path) -> Path:
    """An empty folder for the demo; only a previous demo's folder (marked) is ever replaced."""
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).is_file():
            raise InputError(f"--out {out}: folder exists and was not made by raytopo demo; choose another")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by raytopo demo; replaced by the next demo run\n")
    return out


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    columns = [("dim0_conn4_accuracy", "accuracy (4-conn)"), ("dim0_conn4_f1", "macro F1"),
               ("dim0_conn8_accuracy", "accuracy (8-conn)"), ("dim0_conn4_mae", "MAE")]
    print("\n| model | " + " | ".join(title for _, title in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, metrics in rows.items():
        print(f"| {label} | " + " | ".join(f"{metrics[key]:.3f}" for key, _ in columns) + " |")
    print()


def _say(message: str) -> None:
    print(f"[raytopo demo] {message}", flush=True)
