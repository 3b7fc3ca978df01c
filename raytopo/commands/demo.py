"""`raytopo demo`: TopoDiffusionNet against ADM-T on a local Ray cluster, in under 10 minutes on 2 CPUs.

1. The base: the ADM-T model shipped with raytopo (``pretrained:adm_t_shapes32``: 0-dim Shapes, 32 px,
   counts 1-5), or with ``--from-scratch`` the same model trained here on Ray Train from `base_config`
   (``--export-base DIR`` also writes it in the shipped form: that is the command that regenerates it).
2. From that checkpoint, with identical budgets (steps, seed, batches, learning rate): ADM-T continues
   training, and TDN fine-tunes with L_topo, its persistence diagrams computed by Ray actors.
3. Both are sampled (``--per-count`` masks for every count, the same sampler and seeds) and evaluated as the
   reference does; a table, a side-by-side picture and the time of every stage are printed.

The recipe (x0 prediction, warm-ups, topology weight) and its measurements are in docs/tdn.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytopo.errors import InputError

BASE_NAME = "adm_t_shapes32"
COUNTS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class DemoArgs:
    out: Path = Path("runs/demo")
    address: str | None = None
    from_scratch: bool = False
    export_base: Path | None = None
    finetune_steps: int = 600
    per_count: int = 40
    sampler: str = "ddim"
    sample_steps: int = 50
    num_actors: int = 2
    seed: int = 0
    verbose: bool = False


# --- the recipe -------------------------------------------------------------------------------------------------

MODEL = {
    "unet": {"model_channels": 32, "num_res_blocks": 1, "attention_resolutions": [8], "dropout": 0.0},
    "diffusion": {"steps": 1000, "schedule": "cosine", "var_type": "learned_range", "mean_type": "x0"},
}
DATA = {"source": "shapes", "shapes_dim": "0", "image_size": 32, "num_images": 4000,
        "min_count": COUNTS[0], "max_count": COUNTS[-1], "seed": 0}
# L_topo weight 1.0 with `selection: count` won the Tune sweep tune_spaces/tdn_topo.yaml (docs/tdn.md).
TOPO = {"weight": 1.0, "dims": [0], "birth": True, "death": True, "noisy": True, "selection": "count"}


def base_config(storage: Path | str = "runs", steps: int = 3000) -> dict[str, Any]:
    """The ADM-T pre-training run that made ``pretrained:adm_t_shapes32`` (one worker, 2 CPUs)."""
    return {
        "family": "adm_t",
        "model": MODEL,
        "data": DATA,
        "train": {"steps": steps, "batch_size": 16, "lr": 5.0e-4, "warmup_steps": 100, "ema_rate": 0.999,
                  "ema_warmup": True, "grad_clip": 1.0, "seed": 0, "log_every": 250, "checkpoint_every": 1000},
        "ray": {"num_workers": 1, "cpus_per_worker": 2.0, "storage_path": str(storage), "name": BASE_NAME},
    }


def finetune_config(storage: Path, family: str, steps: int, init_from: str, seed: int = 0,
                    actors: int = 2) -> dict[str, Any]:
    """Stage 2: the same run for ``adm_t`` (continued) and ``tdn`` (+ L_topo); only the family differs.

    The worker takes the machine's CPUs but a sliver that the persistence actors reserve (TDN's diagrams at
    32 px cost well under a millisecond per image, so they barely compete with the network).
    """
    model = {**MODEL, "topo": TOPO} if family == "tdn" else MODEL
    return {
        "family": family,
        "model": model,
        "data": DATA,
        "train": {"steps": steps, "batch_size": 16, "lr": 2.0e-4, "ema_rate": 0.999, "ema_warmup": True,
                  "grad_clip": 1.0, "seed": seed, "log_every": max(1, steps // 4), "checkpoint_every": steps},
        "ray": {"num_workers": 1, "cpus_per_worker": 1.9, "persistence_actors": actors, "cpus_per_actor": 0.05,
                "storage_path": str(storage), "name": family},
        "init_from": init_from,
    }


# --- the command ------------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Wall-clock seconds of each demo stage, in order."""

    stages: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, work, *args, **kwargs):
        _say(f"{name} ...")
        start = time.perf_counter()
        result = work(*args, **kwargs)
        self.stages[name] = time.perf_counter() - start
        _say(f"{name}: {self.stages[name]:.0f} s")
        return result


def run_demo(args: DemoArgs) -> int:
    _check(args)
    out = _fresh_demo_folder(args.out.expanduser().resolve())
    kept = _files(out)            # what someone else put there: never listed, never removed
    try:
        return _demo(args, out)
    finally:
        _list_outputs(out, kept)


def _demo(args: DemoArgs, out: Path) -> int:
    from raytopo.train.trainer import ensure_ray

    timings = Timings()
    started = time.perf_counter()
    quiet = {} if args.verbose else {"logging_level": logging.ERROR}   # Ray's own lines only with --verbose
    timings.run("start Ray", ensure_ray, args.address, log_to_driver=args.verbose, **quiet)
    if args.from_scratch:
        base = str(timings.run("train the ADM-T base from scratch", _train, base_config(out)))
        if args.export_base:
            from raytopo.checkpoint import export_weights

            _say(f"exported the base to {export_weights(base, args.export_base)}")
    else:
        base = f"pretrained:{BASE_NAME}"
        _say(f"base: the shipped ADM-T ({_describe_base(base)})")
    checkpoints = {}
    for label, family in (("ADM-T", "adm_t"), ("TDN", "tdn")):
        config = finetune_config(out, family, args.finetune_steps, base, args.seed, args.num_actors)
        checkpoints[label] = timings.run(f"fine-tune {label} for {args.finetune_steps} steps", _train, config)
    results = {label: timings.run(f"sample and evaluate {label}", _sample_and_evaluate, path, out, label, args)
               for label, path in checkpoints.items()}
    picture = _side_by_side(results, out / "samples" / "adm_t_vs_tdn.png")
    _print_table({label: metrics for label, (metrics, _) in results.items()}, args)
    _print_timings(timings, time.perf_counter() - started)
    print(f"samples:      {out / 'samples'} (side by side: {picture})")
    print(f"TensorBoard:  tensorboard --logdir {out}")
    return 0


def _check(args: DemoArgs) -> None:
    """Bad arguments fail before Ray starts."""
    if args.num_actors < 0:
        raise InputError(f"--actors: expected >= 0, got {args.num_actors}")
    for name in ("finetune_steps", "per_count", "sample_steps"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.export_base is not None:
        if not args.from_scratch:
            raise InputError("--export-base: only with --from-scratch (it exports the base trained here)")
        if args.export_base.exists():
            raise InputError(f"--export-base {args.export_base}: already exists; choose a new folder")
    from raytopo.families.sampling import SamplerSettings

    SamplerSettings(name=args.sampler, steps=args.sample_steps)


def _train(config: dict[str, Any]) -> Path:
    from raytopo.train.config import parse_run_config
    from raytopo.train.logging import follow_progress
    from raytopo.train.trainer import run_training

    run = parse_run_config(config)
    with follow_progress(run.run_dir / "tensorboard", prefix="    "):
        outcome = run_training(run)
    if outcome.checkpoint is None:
        raise RuntimeError(f"{config['ray']['name']}: training finished without a checkpoint")
    return Path(outcome.checkpoint)


def _describe_base(location: str) -> str:
    from raytopo.checkpoint import read_state
    from raytopo.pretrained import resolve

    state = read_state(resolve(location))
    return f"{state['step']} steps; regenerate it with: raytopo demo --from-scratch --export-base DIR"


def _sample_and_evaluate(checkpoint: Path, out: Path, label: str, args: DemoArgs):
    """``per_count`` masks for every count with the demo's sampler (on the driver, with every free core)."""
    from raytopo.commands.sample import write_grid, write_samples
    from raytopo.families.sampling import SamplerSettings
    from raytopo.parallel.cpus import use_free_cpus
    from raytopo.train.loading import load_model_for_sampling

    use_free_cpus()
    family, run, model = load_model_for_sampling(checkpoint)
    settings = SamplerSettings(name=args.sampler, steps=args.sample_steps, seed=args.seed)
    images, cond = family.sample_targets(model, run, settings, args.per_count, batch_size=100,
                                         progress=f"sampling {label}")
    folder = out / "samples" / label.lower().replace("-", "_")
    write_samples(images, [tuple(row) for row in cond["counts"].tolist()], folder)
    write_grid(images, folder)
    return family.evaluate(images, cond, family.count_dims(run)), images


def _side_by_side(results: dict[str, tuple[dict, Any]], path: Path, per_row: int = 8) -> Path:
    """One PNG: for each count a row of ADM-T samples, a gap, then TDN's; upscaled 3x so masks are visible."""
    import numpy as np
    import torch
    from PIL import Image

    from raytopo.train.logging import image_grid

    halves = []
    for _, images in results.values():
        per_count = len(images) // len(COUNTS)
        rows = [images[i * per_count: i * per_count + min(per_row, per_count)] for i in range(len(COUNTS))]
        halves.append(image_grid(torch.cat(rows), columns=min(per_row, per_count)))
    gap = np.full((halves[0].shape[0], 6), 255, dtype=np.uint8)
    picture = np.concatenate([halves[0], gap, halves[1]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).resize((picture.shape[1] * 3, picture.shape[0] * 3), Image.NEAREST).save(path)
    return path


_MARKER = ".raytopo-demo"
_MARKER_HEADER = "written by raytopo demo; the next demo run replaces exactly the files listed below\n"


def _fresh_demo_folder(out: Path) -> Path:
    """An empty folder for the demo. A previous demo's folder (marked) is reused: the files that demo wrote
    (listed in the marker) are removed, and nothing else; a file someone added where the demo writes its runs
    or samples stops the demo in one line instead of being deleted."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: expected a folder, found a file")
    if out.exists() and any(out.iterdir()):
        marker = out / _MARKER
        if not marker.is_file():
            raise InputError(f"--out {out}: folder exists and was not made by raytopo demo; choose another")
        _remove_listed(out, marker)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text(_MARKER_HEADER)
    return out


def _remove_listed(out: Path, marker: Path) -> None:
    text = marker.read_text()
    if not text.startswith(_MARKER_HEADER):
        raise InputError(f"--out {out}: made by an older raytopo demo that kept no list of its files; delete it "
                         "yourself or choose another --out")
    for relative in text[len(_MARKER_HEADER):].splitlines():
        path = out / relative
        if relative and ".." not in Path(relative).parts and path.is_file():
            path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    for name in (BASE_NAME, "adm_t", "tdn", "samples"):
        left = [p for p in (out / name).rglob("*") if p.is_file()] if (out / name).exists() else []
        if left:
            raise InputError(f"--out {out}: {left[0]} was not written by raytopo demo and lies where the demo "
                             "writes; move it or choose another --out")


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != _MARKER}


def _list_outputs(out: Path, kept: set[str]) -> None:
    """Record every file this demo wrote under ``out`` in the marker, so that the next demo removes exactly
    these."""
    files = sorted(_files(out) - kept)
    (out / _MARKER).write_text(_MARKER_HEADER + "".join(f"{name}\n" for name in files))


_COLUMNS = [("dim0_conn4_accuracy", "accuracy"), ("dim0_conn4_f1", "macro F1"), ("dim0_conn4_mae", "MAE"),
            ("dim0_conn4_within1", "within 1"), ("saturated", "saturated px")]


def _print_table(rows: dict[str, dict[str, float]], args: DemoArgs) -> None:
    print(f"\n0-dim Shapes, 32 px: {args.per_count} samples per count 1-5 ({args.sampler} {args.sample_steps} steps),"
          f" components with 4-connectivity; both models fine-tuned {args.finetune_steps} steps from one base")
    print("| model | " + " | ".join(title for _, title in _COLUMNS) + " |")
    print("|---|" + "---|" * len(_COLUMNS))
    for label, metrics in rows.items():
        print(f"| {label} | " + " | ".join(f"{metrics[key]:.3f}" for key, _ in _COLUMNS) + " |")
    gain = rows["TDN"]["dim0_conn4_accuracy"] - rows["ADM-T"]["dim0_conn4_accuracy"]
    print(f"TDN - ADM-T accuracy: {gain:+.3f}\n")


def _print_timings(timings: Timings, total: float) -> None:
    print("time per stage: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.stages.items()))
    print(f"total: {total:.0f} s")


def _say(message: str) -> None:
    print(f"[raytopo demo] {message}", flush=True)
