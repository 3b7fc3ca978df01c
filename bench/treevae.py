"""Benchmarks of TreeVAE and its Diffuse-TreeVAE refiner (docs/treevae.md).

Run:  python bench/treevae.py [--treevae pretrained:treevae_garments28] [--refiner CKPT] [--reference DIR]

* **Stage cost**: one production training step (`train_step`, one torch thread, batch 128, garments 28 px) of
  each kind of stage, timed interleaved: ``root`` (root + 2 leaves, everything trains), a grow stage (the frozen
  shipped tree, the deepest split's subtree trains on the rows reaching it) and ``finetune`` (the whole shipped
  tree). Printed per step, per epoch of the 8192-image set, and as a ratio to the root step. With ``--reference``
  (an extracted lauramanduchi/treevae checkout) the reference's root + 2 leaves step (same shapes, Adam) is timed
  in the same rounds as the baseline.
* **Clustering**: NMI / ACC / ARI / dendrogram purity of the TreeVAE's most probable leaf on ``--per-class x 10``
  held-out garments against k-means on the same pixels with as many clusters as leaves (target: TreeVAE NMI
  above k-means), and the per-leaf class histograms of generated images.
* **Refiner** (``--refiner``): pixel MMD of refined vs unrefined (the TreeVAE's own) samples against held-out
  images (target: refined lower), and sampling time per image at 25 DDIM steps vs the reference's 1000
  ancestral steps (timed on a freshly built refiner when no checkpoint is given).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _steps import training_step  # noqa: E402
from _timing import interleaved_medians, print_table  # noqa: E402

from raytopo.pretrained import resolve  # noqa: E402

GARMENTS = {"source": "garments", "image_size": 28, "channels": 1, "num_images": 8192}


def reference_step(directory: Path, batch_size: int):
    """The reference TreeVAE's root + 2 leaves training step (its forward, its loss, Adam) on garments."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from treevae_reference_parity import build_reference, import_reference

    from raytopo.data.sources import in_memory_arrays

    model = build_reference(import_reference(directory), [])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
    run = _run(GARMENTS, batch_size)
    images = (torch.from_numpy(in_memory_arrays(run.data)["image"][:batch_size]) + 1) / 2

    def step():
        optimizer.zero_grad()
        out = model(images)
        loss = out["rec_loss"] + out["kl_root"] + out["kl_nodes"] + out["kl_decisions"]
        loss.backward()
        optimizer.step()

    return step


def _run(data: dict, batch_size: int, tree: dict | None = None):
    from raytopo.train.config import parse_run_config

    model = {"tree": tree or {"latent_dim": 8, "hidden": 128, "encoder_channels": [8, 16, 32], "max_depth": 4},
             "schedule": {"root": 1000, "grow": 300, "grows": 8, "finetune": 1200}}
    return parse_run_config({"family": "treevae", "model": model, "data": data,
                             "train": {"steps": 4600, "batch_size": batch_size},
                             "ray": {"num_workers": 0, "persistence_actors": 0}})


def stage_timing(args: argparse.Namespace) -> None:
    from raytopo.train.loading import load_model_for_sampling

    family, shipped_run, shipped = load_model_for_sampling(resolve(args.treevae))
    tree = shipped_run.model["tree"]
    run = _run(GARMENTS, args.batch, tree)
    torch.manual_seed(0)
    root = family.build(run)
    finetune = family.build(run, family.structure(shipped))
    finetune.load_state_dict(shipped.state_dict())
    grow = family.build(run, family.structure(shipped))
    grow.load_state_dict(shipped.state_dict())
    deepest = max((p for p in grow.node_paths() if grow.node_kind(p) == "internal"
                   and all(grow.node_kind(c) == "leaf" for c in grow.child_paths(p))), key=len)
    grow.grown = {"grow8": {"leaf": deepest, "min_probability": 0.1}}
    steps = [training_step(run, model, stage, grad_clip=None)[0]
             for model, stage in ((root, "root"), (grow, "grow8"), (finetune, "finetune"))]
    names = ["root (root + 2 leaves)", f"grow (subtree at {deepest!r}, frozen {len(grow.leaf_paths)}-leaf tree)",
             f"finetune ({len(finetune.leaf_paths)} leaves)"]
    if args.reference:
        steps.append(reference_step(args.reference, args.batch))
        names.append("reference root + 2 leaves (max_depth 5)")
    medians = interleaved_medians(steps, repeat=args.repeat)
    per_epoch = GARMENTS["num_images"] / args.batch
    print_table(f"Training step per stage, batch {args.batch}, garments 28 px, 1 thread (median of {args.repeat})",
                ["stage", "ms/step", "s/epoch", "ratio to root"],
                [[name, ms, ms * per_epoch / 1e3, ms / medians[0]] for name, ms in zip(names, medians)])


def clustering(args: argparse.Namespace) -> None:
    from raytopo.families.sampling import SamplerSettings
    from raytopo.train.loading import load_model_for_sampling

    family, run, model = load_model_for_sampling(resolve(args.treevae))
    scores = family.evaluate_model(model, run, SamplerSettings(), args.per_class, 256)
    rows = [[name, scores[name], scores[f"kmeans_{name}"] if f"kmeans_{name}" in scores else ""]
            for name in ("nmi", "acc")]
    rows += [[name, scores[name], ""] for name in ("ari", "leaf_purity", "dendrogram_purity", "leaves",
                                                  "sample_purity", "sample_agreement", "judge_accuracy")]
    print_table(f"Clustering of {args.per_class * 10} held-out garments ({args.treevae})",
                ["figure", "TreeVAE", "k-means (same pixels, as many clusters)"], rows)
    print("target: TreeVAE nmi above k-means")


def refiner_quality(args: argparse.Namespace) -> None:
    from raytopo.data.sources import held_out_arrays
    from raytopo.eval.distribution import distribution_distances
    from raytopo.families.sampling import SamplerSettings
    from raytopo.train.loading import load_model_for_sampling

    family, run, model = load_model_for_sampling(args.refiner)
    scores = family.evaluate_model(model, run, SamplerSettings(steps=50), args.per_class, 64)
    n = args.per_class * 10
    held_out = torch.from_numpy(held_out_arrays(run.data, 2 * n)["image"])
    floor = distribution_distances(held_out[:n], held_out[n:])
    rows = [[f"{label}: pixel MMD^2", scores[f"mmd_{key}refined"], scores[f"mmd_{key}unrefined"],
             scores[f"mmd_{key}refined"] / scores[f"mmd_{key}unrefined"]] for label, key in
            (("samples", ""), ("reconstructions", "recons_"))]
    rows += [[f"{label}: sliced Wasserstein", scores[f"swd_{key}refined"], scores[f"swd_{key}unrefined"],
              scores[f"swd_{key}refined"] / scores[f"swd_{key}unrefined"]] for label, key in
             (("samples", ""), ("reconstructions", "recons_"))]
    rows.append(["held-out vs held-out (the estimators' floor): MMD^2 / SWD", floor["mmd"], floor["swd"], ""])
    print_table(f"Refiner: {n} images vs {n} other held-out garments (DDIM-50, eta 1)",
                ["figure", "refined", "unrefined (TreeVAE)", "ratio"], rows)
    print("target: refined MMD below unrefined (ratio < 1)")


def refiner_sampling_time(args: argparse.Namespace) -> None:
    from raytopo.families.refiner import refine
    from raytopo.families.sampling import SamplerSettings
    from raytopo.registry import get_family
    from raytopo.train.config import parse_run_config
    from raytopo.train.loading import load_model_for_sampling

    if args.refiner:
        family, run, model = load_model_for_sampling(args.refiner)
    else:
        family = get_family("diffuse_treevae")
        run = parse_run_config({"family": "diffuse_treevae", "model": {"treevae": str(args.treevae)},
                                "data": GARMENTS, "train": {"steps": 1, "batch_size": 32}})
        model = family.build(run).eval()
    parsed = family.parse(run)
    n = args.sample_batch
    cond = torch.zeros(n, run.data.channels, run.data.image_size, run.data.image_size)
    label = torch.zeros(n, dtype=torch.long)
    fast = SamplerSettings(name="ddim", steps=25)
    fast_ms = interleaved_medians([lambda: refine(model, parsed, cond, label, fast)], repeat=3)[0]
    start = time.perf_counter()
    refine(model, parsed, cond, label, SamplerSettings(name="ddpm", steps=1000))
    slow_ms = (time.perf_counter() - start) * 1e3
    print_table(f"Refiner sampling, {n} images per call, 1 thread", ["sampler", "ms/image", "ratio"],
                [["reference: ancestral DDPM, 1000 steps", slow_ms / n, 1.0],
                 ["raytopo default: DDIM (eta 1), 25 steps", fast_ms / n, fast_ms / slow_ms]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--treevae", default="pretrained:treevae_garments28")
    parser.add_argument("--refiner", type=Path, default=None)
    parser.add_argument("--reference", type=Path, default=None, help="an extracted lauramanduchi/treevae checkout")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_timing:
        stage_timing(args)
    clustering(args)
    if args.refiner:
        refiner_quality(args)
    if not args.skip_timing:
        refiner_sampling_time(args)


if __name__ == "__main__":
    main()
