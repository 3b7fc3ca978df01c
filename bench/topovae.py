"""Benchmark of the ``topovae`` family: what the topological regulariser costs, and what it buys in 100 steps.

Run:  python bench/topovae.py [--quick] [--threads 1]

(a) **Regulariser cost per step.** For batches of 64 / 128 / 256 garments (28 px; each batch is one point
    cloud of B points in R^784) and each Rips backend (giotto, gudhi): the Rips diagrams of the generated and of
    the true batch plus the regulariser's forward and backward (reference weights 10,10,10,10,0,0,0, H0 + H1),
    timed interleaved with the baseline, one VAE's own forward + backward step on the same batch
    (BCE + KL). Printed: both medians and the ratio regulariser / VAE step.
(b) **Reconstruction over the first 100 steps** (the reference's only claim, docs/references.md, Topo-GEN A.5: faster
    BCE decay): a plain VAE and a TopoVAE from identical initial weights, on the same batches with the same noise
    (the production `train_step`, one AdamW over both, lr 5e-4, batch 128, seed 1234; in-process persistence).
    Printed at steps 10, 25, 50, 75, 100: the training-batch BCE per sample and the BCE per sample on 512
    held-out garments (latent means decoded), for both models, and the ratio TopoVAE / VAE.

Tables are printed and written to bench/out/topovae[_quick].txt. ``--quick``: batches 64 and 128, giotto
only above 128, 3 repeats, 50 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import interleaved_medians, print_table  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
CHECKPOINTS = (10, 25, 50, 75, 100)


def run_config(batch: int, backend: str = "giotto", steps: int = 100):
    from raytopo.train.config import parse_run_config

    return parse_run_config({
        "family": "topovae",
        "model": {"topo": {"weights": [10, 10, 10, 10, 0, 0, 0], "backend": backend, "maxdim": 1}},
        "data": {"source": "garments", "image_size": 28, "num_images": max(batch * steps, batch), "seed": 1234},
        "train": {"steps": steps, "batch_size": batch, "lr": 5e-4, "seed": 1234, "grad_clip": None},
        "ray": {"num_workers": 0},
    })


# --- (a) cost per step ----------------------------------------------------------------------------------------


def regulariser_cost(batches: list[int], backends: list[str], repeat: int, skip_gudhi_above: int) -> list[list]:
    from raytopo.data.garments import garment_images
    from raytopo.families.topovae import flatten_cloud
    from raytopo.models.topovae import VAE, kl_divergence, reconstruction_loss
    from raytopo.topology.regularisers import TopologicalRegulariser, TopoRegulariserConfig
    from raytopo.topology.rips import rips_persistence

    rows = []
    images, _ = garment_images(max(batches), 28, seed=1234)
    torch.manual_seed(1234)
    vae = VAE()
    for batch in batches:
        x = torch.from_numpy(images[:batch]).float()[:, None] / 255.0
        with torch.no_grad():
            generated = vae(x).reconstruction

        def vae_step() -> None:
            vae.zero_grad(set_to_none=True)
            out = vae(x)
            (reconstruction_loss(out.reconstruction, x) + kl_divergence(out.mu, out.logvar)).mean().backward()

        candidates = [vae_step]
        names = []
        for backend in backends:
            if backend == "gudhi" and batch > skip_gudhi_above:
                continue
            regulariser = TopologicalRegulariser(TopoRegulariserConfig(weights=(10, 10, 10, 10, 0, 0, 0),
                                                                       backend=backend))

            def topo_step(regulariser=regulariser, backend=backend) -> None:
                live = flatten_cloud(generated).clone().requires_grad_(True)
                truth = flatten_cloud(x)
                diagrams = rips_persistence(live.detach().numpy(), 1, backend)
                true_diagrams = rips_persistence(truth.numpy(), 1, backend)
                value, got = regulariser(live, truth, diagrams, true_diagrams)
                if got:
                    value.backward()

            candidates.append(topo_step)
            names.append(backend)
        medians = interleaved_medians(candidates, repeat=repeat)
        for name, median in zip(names, medians[1:]):
            rows.append([batch, name, median, medians[0], median / medians[0]])
    return rows


# --- (b) reconstruction curves ----------------------------------------------------------------------------------


def reconstruction_curves(steps: int) -> list[list]:
    from raytopo.families.base import StepContext
    from raytopo.families.topovae import evaluation_images
    from raytopo.models.topovae import reconstruction_loss
    from raytopo.parallel.pool import PersistencePool, PoolConfig
    from raytopo.registry import get_family
    from raytopo.train.data import batch_iterator
    from raytopo.train.loop import make_optimizer
    from raytopo.train.step import train_step

    run = run_config(128, steps=steps)
    family = get_family("topovae")
    torch.manual_seed(run.train.seed)
    model = family.build(run)
    optimizer = make_optimizer(family, model, run)   # the trainer's policy: one parameter group per model
    ctx = StepContext(step=0, device=torch.device("cpu"), pool=PersistencePool(PoolConfig(num_actors=0)),
                      generator=torch.Generator(), extras=family.setup(run))
    batches = batch_iterator(run.data, run.train.batch_size, 0, 1, run.train.seed, torch.device("cpu"))
    held_out = evaluation_images(run.data, 512)
    rows = []
    for step in range(steps):
        ctx.step = step
        ctx.generator.manual_seed(run.train.seed * 1_000_003 + step)
        metrics = train_step(model, family, next(batches), ctx, family.loss_weights(run), optimizer, 1, None)
        done = step + 1
        if done in CHECKPOINTS:
            with torch.no_grad():
                outputs = model(held_out, torch.zeros(len(held_out), 10))
                held = {name: reconstruction_loss(out.reconstruction, held_out).mean().item()
                        for name, out in outputs.items()}
            rows.append([done, metrics["vae_rec"], metrics["topovae_rec"], metrics["topovae_rec"] / metrics["vae_rec"],
                         held["vae"], held["topovae"], held["topovae"] / held["vae"], metrics["topo"] * 128])
    return rows


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches 64/128, 3 repeats, 50 steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [64, 128] if args.quick else [64, 128, 256]
    repeat, steps = (3, 50) if args.quick else (7, 100)
    OUT.mkdir(exist_ok=True)
    path = OUT / ("topovae_quick.txt" if args.quick else "topovae.txt")
    with open(path, "w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        print(f"# bench/topovae.py {'--quick ' if args.quick else ''}(torch threads {args.threads})")
        print_table("(a) regulariser cost per step vs one VAE forward+backward (ms, medians, interleaved)",
                    ["batch", "backend", "diagrams + regulariser fwd/bwd", "VAE step", "ratio"],
                    regulariser_cost(batches, ["giotto", "gudhi"], repeat, skip_gudhi_above=128 if args.quick else 256))
        print_table(f"(b) BCE per sample, VAE vs TopoVAE from identical weights (batch 128, lr 5e-4, {steps} steps)",
                    ["step", "train VAE", "train TopoVAE", "ratio", "held-out VAE", "held-out TopoVAE", "ratio",
                     "topo (weighted sum)"],
                    reconstruction_curves(steps))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
