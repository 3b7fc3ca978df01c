"""How good is a diffusion model's clean-image estimate x0_hat at each noise level (why eps models made speckle).

Run:  python bench/x0_estimate_error.py CHECKPOINT [CHECKPOINT ...]    # any adm / adm_t / tdn checkpoints
      python bench/x0_estimate_error.py --train 1000                    # train an eps and an x0 base here first
      e.g. python bench/x0_estimate_error.py pretrained:adm_t_shapes32

For ``--images`` training masks and each timestep t of ``--timesteps`` it noises the masks to x_t (fixed
noise), asks the model for x0_hat (clamped to [-1, 1], as samplers and L_topo use it) and prints

* the factor sqrt(1/abar_t - 1) by which an eps model's error enters x0_hat (Ho et al. 2020, eq. 15),
* the mean squared error of x0_hat and the fraction of pixels with the wrong sign,
* the fraction of x0_hat whose component count (4-connectivity) differs from the mask's label.

``--train N`` trains, with the demo's base recipe (`raytopo.commands.demo.base_config`) in-process, one model
predicting eps and one predicting x0 for N steps each, then measures both: the comparison in docs/tdn.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import print_table  # noqa: E402

TIMESTEPS = "300,500,700,850,900,950,995,999"


def x0_estimate_rows(checkpoint: Path | str, timesteps: list[int], n_images: int) -> list[list]:
    """One row per timestep: [t, amplification, MSE, wrong-sign fraction, wrong-count fraction]."""
    from raytopo.train.loading import load_model_for_sampling
    from raytopo.data.sources import in_memory_arrays

    family, run, model = load_model_for_sampling(checkpoint)
    diffusion = family.diffusion(run)
    arrays = in_memory_arrays(run.data)
    batch = {key: torch.from_numpy(value[:n_images]) for key, value in arrays.items()}
    x0 = batch["image"]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator)
    rows = []
    for step in timesteps:
        t = torch.full((len(x0),), step, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t, noise=noise)
        with torch.no_grad():
            output = diffusion.call_model(model, x_t, t, family.model_kwargs(batch))
        pred = diffusion.p_mean_variance(output, x_t, t, clip=True)["pred_x0"]
        counts = family.evaluate(pred, {"counts": batch["counts"]}, family.count_dims(run))
        measure = "dim1" if family.count_dims(run) == (1,) else "dim0_conn4"
        abar = float(diffusion.alphas_cumprod[step])
        rows.append([step, f"{math.sqrt(1 / abar - 1):.3g}", float(((pred - x0) ** 2).mean()),
                     float((torch.sign(pred) != torch.sign(x0)).float().mean()),
                     1.0 - counts[f"{measure}_accuracy"]])
    return rows


def train_bases(steps: int, out: Path) -> list[Path]:
    """An eps and an x0 model with the demo's base recipe (in-process), for ``steps`` steps each."""
    from raytopo.commands.demo import base_config
    from reproduction import local, train

    checkpoints = []
    for mean_type in ("epsilon", "x0"):
        config = local(base_config(steps=steps))
        config["model"]["diffusion"] = {**config["model"]["diffusion"], "mean_type": mean_type}
        checkpoint, _ = train(config, out / f"base_{mean_type}_{steps}")
        checkpoints.append(checkpoint)
    return checkpoints


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", help="checkpoint directories or pretrained:<name>")
    parser.add_argument("--train", type=int, default=0, metavar="STEPS",
                        help="first train an eps and an x0 base for STEPS steps each")
    parser.add_argument("--timesteps", default=TIMESTEPS, help=f"comma-separated (default {TIMESTEPS})")
    parser.add_argument("--images", type=int, default=256, help="training masks to noise (default 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "x0_estimate")
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.train:
        parser.error("give checkpoints, --train STEPS, or both")
    torch.set_num_threads(args.threads)
    checkpoints = list(args.checkpoints)
    if args.train:
        import ray

        ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        try:
            checkpoints += train_bases(args.train, args.out)
        finally:
            ray.shutdown()
    timesteps = [int(t) for t in args.timesteps.split(",")]
    for checkpoint in checkpoints:
        print_table(f"x0_hat of {checkpoint} on {args.images} training masks",
                    ["t", "sqrt(1/abar - 1)", "MSE", "wrong-sign pixels", "wrong count"],
                    x0_estimate_rows(checkpoint, timesteps, args.images))


if __name__ == "__main__":
    main()
