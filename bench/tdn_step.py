"""Benchmark of one training step: ``tdn`` (L_topo, persistence on CPU) against ``adm_t`` (no topology).

Run:  python bench/tdn_step.py [--size 64] [--batch 16] [--device cpu|cuda] [--repeat 7] [--quick]
      e.g. on a GPU machine: python bench/tdn_step.py --size 256 --device cuda --num-cpus 16 --actors 8

Every variant is timed with the production `train_step` on the *same* model and the *same* batch, interleaved
round-robin (absolute times drift on a shared machine; the ratios hold):

* ``adm_t``                                  - the baseline (L_simple + L_vlb);
* ``tdn`` serial in-process                  - the reference way: persistence inside the training process;
* ``tdn`` on a PersistencePool of N actors   - with ``microbatches=1`` (no overlap: the step waits for all
  diagrams) and ``microbatches=2`` (micro-batch pipelining: chunk 1's diagrams are computed while chunk 2 runs
  forward and chunk 1 runs backward); ``adm_t`` with ``microbatches=2`` is timed as its own baseline.

The optimiser runs with lr = 0, so the weights (and hence x0_hat and the diagrams) never change between calls,
and the step's noise/timesteps are re-seeded identically before every call. "blocked" is the time the training
process spends inside the pool's ``submit`` + ``result`` per step: the whole persistence work when serial,
only the un-hidden part on actors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _timing import interleaved_medians, print_table  # noqa: E402


class TimedPool:
    """A PersistencePool wrapper that adds up the time the caller spends blocked in ``submit``/``result``."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.blocked_s = 0.0

    def submit(self, *args, **kwargs):
        start = time.perf_counter()
        future = self.pool.submit(*args, **kwargs)
        self.blocked_s += time.perf_counter() - start
        return _TimedFuture(future, self)

    def close(self) -> None:
        self.pool.close()


class _TimedFuture:
    def __init__(self, future, owner: TimedPool) -> None:
        self._future, self._owner = future, owner

    def result(self, timeout: float | None = None):
        start = time.perf_counter()
        try:
            return self._future.result(timeout)
        finally:
            self._owner.blocked_s += time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=32, help="UNet model_channels")
    parser.add_argument("--res-blocks", type=int, default=1, help="UNet num_res_blocks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--actors", type=int, default=2, help="persistence actors of the pool variants")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="adm_t steps (lr 2e-4) before timing; 0 = predictions at initialisation")
    parser.add_argument("--selection", choices=("match", "count"), default="match")
    parser.add_argument("--noisy", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the trainer (0: torch default)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="32 px, batch 8, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeat = 32, 8, 3
    return args


def build(args: argparse.Namespace):
    """(runs by family, model, fixed batch): adm_t and tdn share the architecture and the weights."""
    from raytopo.registry import get_family
    from raytopo.train.config import parse_run_config
    from raytopo.data.sources import in_memory_arrays

    runs = {}
    for family in ("adm_t", "tdn"):
        model = {"unet": {"model_channels": args.channels, "num_res_blocks": args.res_blocks,
                          "attention_resolutions": [16] if args.size >= 64 else [8]}}
        if family == "tdn":
            model["topo"] = {"weight": 1e-5, "selection": args.selection, "noisy": args.noisy}
        runs[family] = parse_run_config({"family": family, "model": model,
                                         "data": {"image_size": args.size, "num_images": max(args.batch, 64)},
                                         "train": {"batch_size": args.batch, "microbatches": 1}})
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = get_family("tdn").build(runs["tdn"]).to(device)
    arrays = in_memory_arrays(runs["tdn"].data)
    batch = {key: torch.from_numpy(value[:args.batch]).to(device) for key, value in arrays.items()}
    return runs, model, batch


def pretrain(model, runs, batch, args: argparse.Namespace) -> None:
    """A few adm_t steps so that x0_hat looks less like noise (fewer diagram points)."""
    from raytopo.families.base import StepContext
    from raytopo.registry import get_family
    from raytopo.train.step import train_step

    family = get_family("adm_t")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    ctx = StepContext(step=0, device=batch["image"].device, generator=_generator(batch),
                      extras=family.setup(runs["adm_t"]))
    for step in range(args.pretrain_steps):
        ctx.step = step
        train_step(model, family, batch, ctx, family.loss_weights(runs["adm_t"]), optimizer, 1, 1.0)


def _generator(batch) -> torch.Generator:
    return torch.Generator(device=batch["image"].device).manual_seed(0)


def make_step(model, family_name: str, run, batch, pool, microbatches: int, optimizer):
    """A zero-argument callable doing one `train_step` with fixed noise/timesteps."""
    from raytopo.families.base import StepContext
    from raytopo.registry import get_family
    from raytopo.train.step import train_step

    family = get_family(family_name)
    weights = family.loss_weights(run)
    ctx = StepContext(step=0, device=batch["image"].device, pool=pool, generator=_generator(batch),
                      extras=family.setup(run))
    cuda = batch["image"].is_cuda

    def step() -> None:
        ctx.generator.manual_seed(0)
        train_step(model, family, batch, ctx, weights, optimizer, microbatches, 1.0)
        if cuda:
            torch.cuda.synchronize()

    return step


def persistence_only(model, runs, batch) -> tuple[float, float]:
    """(ms per batch of `critical_targets` serially on this step's x0_hat, mean H0 points per image)."""
    from raytopo.families.base import StepContext
    from raytopo.registry import get_family
    from raytopo.topology.cubical import cubical_persistence
    from raytopo.topology.losses import critical_targets

    family = get_family("tdn")
    captured = {}

    class Capture:
        def submit(self, batch_arrays, fn, **kwargs):
            captured["arrays"], captured["kwargs"] = batch_arrays, kwargs
            return None

    ctx = StepContext(step=0, device=batch["image"].device, pool=Capture(), generator=_generator(batch),
                      extras=family.setup(runs["tdn"]))
    with torch.no_grad():
        family.losses(model, batch, ctx)
    pred, reference = captured["arrays"]
    config = captured["kwargs"]["config"]

    def serial() -> None:
        for p, r in zip(pred, reference):
            critical_targets(p, r, config=config)

    elapsed = interleaved_medians([serial], repeat=5, warmup=1)[0]  # warm-up: first call imports backends
    points = np.mean([len(cubical_persistence(p[0], maxdim=0, filtration="superlevel")[0]) for p in pred])
    return elapsed, float(points)


def main(argv: list[str] | None = None) -> None:
    import ray

    from raytopo.parallel.pool import PersistencePool, PoolConfig

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    runs, model, batch = build(args)
    if args.pretrain_steps:
        pretrain(model, runs, batch, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # full optimiser work, weights unchanged
    ph_ms, points = persistence_only(model, runs, batch)

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    serial = TimedPool(PersistencePool(PoolConfig(num_actors=0)))
    actors = TimedPool(PersistencePool(PoolConfig(num_actors=args.actors)))
    try:
        variants = [  # (label, family, pool, microbatches)
            ("adm_t", "adm_t", None, 1),
            ("tdn, serial in-process (reference way)", "tdn", serial, 1),
            (f"tdn, {args.actors} actors, no overlap", "tdn", actors, 1),
            ("adm_t", "adm_t", None, 2),
            (f"tdn, {args.actors} actors, pipelined", "tdn", actors, 2),
        ]
        steps = [make_step(model, fam, runs[fam], batch, pool, mb, optimizer) for _, fam, pool, mb in variants]
        times, blocked = time_variants(steps, variants, args.repeat)
    finally:
        serial.close()
        actors.close()
        ray.shutdown()
    report(args, variants, times, blocked, ph_ms, points)


def time_variants(steps, variants, repeat: int) -> tuple[list[float], list[float]]:
    """Interleaved medians (ms/step) and median time blocked on persistence (ms/step) of each variant.

    Warm-up calls (actor start, backend imports) run first and are not counted.
    """
    for step in steps:
        step()
    blocked: list[list[float]] = [[] for _ in steps]

    def measured(k: int):
        pool = variants[k][2]

        def run() -> None:
            before = pool.blocked_s if pool is not None else 0.0
            steps[k]()
            if pool is not None:
                blocked[k].append(1e3 * (pool.blocked_s - before))

        return run

    times = interleaved_medians([measured(k) for k in range(len(steps))], repeat=repeat, warmup=0)
    return times, [float(np.median(b)) if b else 0.0 for b in blocked]


def report(args, variants, times, blocked, ph_ms: float, points: float) -> None:
    base = {mb: t for (label, fam, _, mb), t in zip(variants, times) if fam == "adm_t"}
    rows = []
    for (label, fam, pool, mb), t, b in zip(variants, times, blocked):
        rows.append([label, mb, t, t / base[1], t / base[mb], b if pool else "-", b / t if pool else "-"])
    threads = torch.get_num_threads()
    print_table(
        f"train_step, {args.size} px, batch {args.batch}, UNet model_channels {args.channels}, num_res_blocks "
        f"{args.res_blocks}, {args.device}, predictions "
        f"{'after %d adm_t steps' % args.pretrain_steps if args.pretrain_steps else 'at initialisation'}; "
        f"median ms/step of {args.repeat}, interleaved",
        ["variant", "microbatches", "ms/step", "ratio / adm_t (mb 1)", "ratio / adm_t (same mb)",
         "blocked on persistence, ms/step", "blocked fraction"], rows,
    )
    print(f"\nPersistence work alone (critical_targets, selection {args.selection}, serial): {ph_ms:.1f} ms per "
          f"batch of {args.batch}, {points:.0f} H0 points per x0_hat on average.")
    print(f"CPU: {os.cpu_count()} cores visible, torch uses {threads} threads, Ray given {args.num_cpus} CPUs, "
          f"{args.actors} actors x 1 CPU. On a 2-core box the actors compete with the training process for the "
          f"same cores, so the pool can only win when the persistence work is large relative to the network.")


if __name__ == "__main__":
    main()
