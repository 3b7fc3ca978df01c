"""The `raytopo` command line. Parsing only: each subcommand's work lives in raytopo/commands/.

User errors (`RaytopoError`) print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from raytopo.commands.demo import DemoArgs
from raytopo.errors import RaytopoError


class _LazyChoices:
    """argparse choices read from ``raytopo.diffusion.samplers`` on first use, so the CLI starts without torch."""

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute

    def _names(self) -> tuple[str, ...]:
        from raytopo.diffusion import samplers

        return tuple(getattr(samplers, self.attribute))

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self):
        return iter(self._names())


def _dims(text: str) -> tuple[int, ...]:
    choices = {"0": (0,), "1": (1,), "both": (0, 1)}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected 0, 1 or both, got {text!r}")
    return choices[text]


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line (``raytopo sample: error: argument --per-count: expected >= 1, got 0``) and
    exit status 2, like every other user error; ``--help`` shows the usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (a bad value fails at parsing, in one line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected >= {minimum}, got {value}")
        return value

    return parse


def _topology(args: argparse.Namespace) -> int:
    from raytopo.commands.topology import TopologyArgs, run_topology

    plot = None
    if args.plot is not None:
        plot = Path(args.plot) if args.plot else args.out / (args.image.stem + "_diagram.png")
    return run_topology(TopologyArgs(args.image, args.dim, args.top, args.json, plot, args.overwrite))


def _evaluate(args: argparse.Namespace) -> int:
    from raytopo.commands.evaluate import EvaluateArgs, run_evaluate

    return run_evaluate(EvaluateArgs(args.folder, args.dim, args.convention, args.classes, args.json, args.out,
                                     args.overwrite))


def _train(args: argparse.Namespace) -> int:
    from raytopo.commands.train import TrainArgs, run_train

    return run_train(TrainArgs(args.config, tuple(args.set), args.address, args.resume))


def _sample(args: argparse.Namespace) -> int:
    from raytopo.commands.sample import SampleArgs, run_sample

    return run_sample(SampleArgs(args.checkpoint, args.counts, args.per_count, args.out, args.sampler, args.steps,
                                 args.eta, args.seed, args.batch_size, args.schedule, args.rho, args.overwrite,
                                 args.classes, args.masks, args.guidance, args.conditioning_scale))


def _pipeline(args: argparse.Namespace) -> int:
    from raytopo.commands.pipeline import PipelineArgs, run_pipeline
    from raytopo.commands.sample import given_sampler_flags, sampler_settings

    return run_pipeline(PipelineArgs(args.masks_from, args.controlnet, args.counts, args.per_count, args.out,
                                     args.class_name, sampler_settings(args), args.batch_size, args.overwrite,
                                     given_sampler_flags(args)))


def _export(args: argparse.Namespace) -> int:
    from raytopo.commands.export import ExportArgs, run_export

    return run_export(ExportArgs(args.checkpoint, args.diffusers))


def _score(args: argparse.Namespace) -> int:
    from raytopo.commands.score import ScoreArgs, run_score
    from raytopo.commands.sample import given_sampler_flags, sampler_settings

    return run_score(ScoreArgs(args.checkpoint, sampler_settings(args), args.per_count, args.batch_size, args.json,
                               args.out, args.overwrite, given_sampler_flags(args)))


def _data_shapes(args: argparse.Namespace) -> int:
    from raytopo.commands.data import ShapesArgs, run_shapes

    return run_shapes(ShapesArgs(args.dim, args.n, args.size, args.max_count, args.min_count, args.objects,
                                 args.seed, args.out))


def _study(args: argparse.Namespace) -> int:
    from raytopo.commands.study import StudyArgs, run_study_command

    return run_study_command(StudyArgs(args.spec, args.resume, args.address, args.storage))


def _data_pack(args: argparse.Namespace) -> int:
    from raytopo.commands.data import PackArgs, run_pack

    return run_pack(PackArgs(args.folder, args.out, args.convention, args.rows_per_shard, args.overwrite,
                             args.layout, args.rows_per_group))


def _data_inspect(args: argparse.Namespace) -> int:
    from raytopo.commands.data import InspectArgs, run_inspect

    return run_inspect(InspectArgs(args.config, tuple(args.set), args.batches, args.rank, args.world,
                                   args.resume_step, args.split, args.json))


def _tune(args: argparse.Namespace) -> int:
    from raytopo.commands.tune import TuneArgs, run_tune

    return run_tune(TuneArgs(args.space, args.num_samples, args.resume, args.address, args.storage))


def _demo(args: argparse.Namespace) -> int:
    from raytopo.commands.demo import run_demo

    return run_demo(DemoArgs(out=args.out, address=args.address, from_scratch=args.from_scratch,
                             export_base=args.export_base, finetune_steps=args.finetune_steps,
                             per_count=args.per_count, sampler=args.sampler, sample_steps=args.steps,
                             num_actors=args.actors, seed=args.seed, verbose=args.verbose))


def _pointcloud(args: argparse.Namespace) -> int:
    from raytopo.commands.pointcloud import PointCloudArgs, run_pointcloud

    return run_pointcloud(PointCloudArgs(args.preset, args.out, args.points, args.target_points, args.steps, args.lr,
                                         args.weights, args.frame_every, args.seed, args.scale, not args.no_push0))


def _add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler flags shared by `sample`, `score` and `pipeline` (fields of SamplerSettings, plus the batch
    size). Left out, a flag is None and takes the settings' default, so a command can tell a flag given to a
    model that would ignore it."""
    parser.add_argument("--sampler", choices=_LazyChoices("SAMPLERS"), default=None, metavar="NAME",
                        help="%(choices)s (default ddim); ddpm samples with the posterior variance, ddpm_learned "
                             "with the model's learned variance (iDDPM)")
    parser.add_argument("--steps", type=_at_least(1), default=None, help="sampling steps (default 50)")
    parser.add_argument("--eta", type=_finite_in(None, None), default=None,
                        help="noise in [0, 1] for ddim (default 0: deterministic) and euler_ancestral (default 1)")
    parser.add_argument("--schedule", choices=_LazyChoices("SCHEDULES"), default=None, metavar="NAME",
                        help="sigmas: default (the model's own evenly strided steps) or karras (eq. 5 of Karras"
                             " et al. 2022)")
    parser.add_argument("--rho", type=_finite_in(0, None, open_low=True), default=None,
                        help="karras schedule exponent (default 7)")
    parser.add_argument("--seed", type=_at_least(0), default=0)
    parser.add_argument("--batch-size", type=_at_least(1), default=16)
    parser.add_argument("--guidance", type=_finite_in(0, None), default=None,
                        help="ldm/controlnet: classifier-free guidance scale s (default: the model's, 3)")
    parser.add_argument("--conditioning-scale", type=_finite_in(0, None), default=None,
                        help="controlnet: factor of the ControlNet residuals (default: the model's, 1)")


def _finite_in(low: float | None, high: float | None, open_low: bool = False):
    """An argparse type: a finite number in [low, high] (``open_low``: > low), refused in one line otherwise."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if open_low else value < low)
        if too_low or (high is not None and value > high):
            bound = f"> {low:g}" if open_low else f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            # (a range left open on both sides, like --eta's, is checked by SamplerSettings)
            raise argparse.ArgumentTypeError(f"expected {bound}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="raytopo", description="Ray distributed training for topology-aware generative models."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    topology = commands.add_parser("topology", help="Betti numbers and persistence diagram of one image")
    topology.add_argument("image", type=Path, help="a PNG/JPEG mask or grayscale image (bright = foreground)")
    topology.add_argument("--dim", type=_dims, default=(0, 1), help="0, 1 or both (default both)")
    topology.add_argument("--top", type=_at_least(0), default=5, help="how many of the most persistent features to list")
    topology.add_argument("--json", action="store_true", help="print JSON instead of text")
    topology.add_argument(
        "--plot", nargs="?", const="", default=None, metavar="PNG",
        help="write a persistence-diagram plot (default: --out/IMAGE_diagram.png, never into the image's folder)",
    )
    topology.add_argument("--out", type=Path, default=Path("."),
                          help="folder for --plot's default file (default: the current folder)")
    topology.add_argument("--overwrite", action="store_true", help="replace a diagram plot raytopo wrote before")
    topology.set_defaults(run=_topology)

    evaluate = commands.add_parser("evaluate", help="count accuracy, P/R/F1 and MAE of masks labelled by file name")
    evaluate.add_argument("folder", type=Path, help="folder of PNG/JPEG masks named by their target count(s)")
    evaluate.add_argument("--dim", type=_dims, default=(0,), help="0 (components), 1 (holes) or both (default 0)")
    evaluate.add_argument(
        "--convention", choices=("count", "two_counts", "count_object"), default=None,
        help="file-name labels: c_xxx, u_v_xxx or c_objname_xxx (default: two_counts for --dim both, else count)",
    )
    evaluate.add_argument(
        "--classes", default=None, metavar="K,K,...",
        help="classes of the per-class metrics, e.g. 1,2,3,4,5 (default: the target counts found)",
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--out", type=Path, default=None, help="also write the metrics JSON to this file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace a metrics file raytopo wrote before")
    evaluate.set_defaults(run=_evaluate)

    train = commands.add_parser("train", help="train a model family on Ray (Ray Train TorchTrainer)")
    train.add_argument("config", type=Path, help="a YAML run config (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.steps=100 (repeatable)")
    train.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a new local cluster)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this run")
    train.set_defaults(run=_train)

    sample = commands.add_parser("sample", help="generate images (masks with requested counts) from a checkpoint")
    sample.add_argument("checkpoint", type=Path, help="a checkpoint directory written by raytopo train")
    sample.add_argument("--counts", default=None,
                        help="count-conditioned families: target counts, e.g. 1,2,3 (or 2:1,3:0 for components:holes)")
    sample.add_argument("--classes", default=None,
                        help="class families: class names or indices to sample, e.g. red_stripes,blue_dots "
                             "(default: every class; written to OUT/<class>/<class>_NNNN.png)")
    sample.add_argument("--masks", type=Path, default=None,
                        help="controlnet: a folder of masks to follow (default: held-out masks of its data)")
    sample.add_argument("--per-count", type=_at_least(1), default=4,
                        help="samples per target count, class or mask, or in total for unconditional "
                             "families (default 4)")
    _add_sampler_arguments(sample)
    sample.add_argument("--out", type=Path, required=True, help="output folder for the PNGs and grid.png")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace the samples of an earlier run in --out (default: refuse a non-empty folder)")
    sample.set_defaults(run=_sample)

    score = commands.add_parser("score", help="a checkpoint's evaluation by its family (the metrics Tune reports)")
    score.add_argument("checkpoint", type=Path, help="a checkpoint directory written by raytopo train")
    score.add_argument("--per-count", type=_at_least(1), default=8,
                       help="evaluation size: samples per target count (tdn), per evaluation batch, ... (default 8)")
    _add_sampler_arguments(score)
    score.add_argument("--json", action="store_true", help="print JSON instead of one line per metric")
    score.add_argument("--out", type=Path, default=None, help="also write the metrics JSON to this file")
    score.add_argument("--overwrite", action="store_true", help="replace a metrics file raytopo wrote before")
    score.set_defaults(run=_score)

    pipeline = commands.add_parser("pipeline", help="counts -> mask -> image: a count model's masks rendered by a "
                                                     "ControlNet, with the topology of both stages")
    pipeline.add_argument("--masks-from", type=Path, required=True, metavar="CHECKPOINT",
                          help="a tdn or adm_t checkpoint that generates the masks")
    pipeline.add_argument("--controlnet", type=Path, required=True, metavar="CHECKPOINT",
                          help="a controlnet checkpoint that renders them")
    pipeline.add_argument("--counts", required=True, help="target counts, e.g. 1,2,3 (or 2:1 components:holes)")
    pipeline.add_argument("--per-count", type=_at_least(1), default=4, help="images per target count (default 4)")
    pipeline.add_argument("--class", dest="class_name", default=None,
                          help="render every image in this class of the ControlNet's data; 'any': the null class "
                               "(unguided); default: the classes in turn")
    _add_sampler_arguments(pipeline)
    pipeline.add_argument("--out", type=Path, required=True, help="output folder: masks/, images/, grid/, report.json")
    pipeline.add_argument("--overwrite", action="store_true", help="replace an earlier pipeline's outputs in --out")
    pipeline.set_defaults(run=_pipeline)

    export = commands.add_parser("export", help="a latent-family checkpoint as diffusers directories")
    export.add_argument("checkpoint", type=Path, help="an ldm or controlnet checkpoint directory")
    export.add_argument("--diffusers", type=Path, required=True, metavar="DIR",
                        help="new folder for vae/, unet/, controlnet/, scheduler/ and raytopo.json")
    export.set_defaults(run=_export)

    data = commands.add_parser("data", help="make or pack datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    shapes = data_commands.add_parser("shapes", help="synthetic masks with exact component/hole counts")
    shapes.add_argument("--dim", choices=["0", "1", "both"], default="0")
    shapes.add_argument("--n", type=_at_least(1), required=True, help="number of masks")
    shapes.add_argument("--size", type=_at_least(1), default=64, help="image side in pixels (default 64)")
    shapes.add_argument("--max-count", type=_at_least(0), default=5)
    shapes.add_argument("--min-count", type=_at_least(0), default=1)
    shapes.add_argument("--objects", action="store_true", help="one shape kind per mask, named c_kind_xxx.png")
    shapes.add_argument("--seed", type=_at_least(0), default=0)
    shapes.add_argument("--out", type=Path, required=True)
    shapes.set_defaults(run=_data_shapes)
    pack = data_commands.add_parser("pack", help="pack a labelled image folder into parquet shards for Ray Data")
    pack.add_argument("folder", type=Path)
    pack.add_argument("--out", type=Path, required=True)
    pack.add_argument("--convention", choices=["count", "two_counts", "count_object"], default="count",
                      help="file-name labels of the names layout (default count)")
    pack.add_argument("--layout", choices=["names", "class_folder", "image_mask"], default="names",
                      help="labels from file names (default), FOLDER/<class>/*, or FOLDER/images + FOLDER/masks")
    pack.add_argument("--rows-per-shard", type=_at_least(1), default=1024)
    pack.add_argument("--rows-per-group", type=_at_least(1), default=16,
                      help="rows per parquet row group: what a training stream reads and shuffles as one block")
    pack.add_argument("--overwrite", action="store_true", help="replace an existing pack (only its shards)")
    pack.set_defaults(run=_data_pack)
    inspect = data_commands.add_parser("inspect", help="what training will see: split sizes, and each batch's row "
                                                       "ids and labels (no image decoded, no Ray)")
    inspect.add_argument("config", type=Path)
    inspect.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    inspect.add_argument("--batches", type=_at_least(1), default=4, help="how many batches to list (default 4)")
    inspect.add_argument("--rank", type=_at_least(0), default=0, help="the worker to show (default 0)")
    inspect.add_argument("--world", type=_at_least(1), default=None,
                         help="how many workers share the data (default: ray.num_workers)")
    inspect.add_argument("--resume-step", type=_at_least(0), default=0,
                         help="start at the batch a run resumed at this step would draw")
    inspect.add_argument("--split", choices=["train", "eval", "judge"], default=None,
                         help="list one split's row ids instead of batches")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(run=_data_inspect)

    study = commands.add_parser("study", help="variants x seeds as a Tune grid: means, spreads, 95%% intervals")
    study.add_argument("spec", type=Path, help="a YAML study, e.g. studies/topovae_claim.yaml")
    study.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    study.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a new local cluster)")
    study.add_argument("--storage", default=None, metavar="DIR", help="where the study folder goes (default: the spec's)")
    study.set_defaults(run=_study)

    tune = commands.add_parser("tune", help="a Ray Tune sweep over a YAML search space (see tune_spaces/)")
    tune.add_argument("space", type=Path, help="a YAML search space, e.g. tune_spaces/tdn_topo.yaml")
    tune.add_argument("--num-samples", type=_at_least(1), default=None, help="trials to sample (default: the space's)")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    tune.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a new local cluster)")
    tune.add_argument("--storage", default=None, metavar="DIR",
                      help="where sweeps are kept (default: the space's storage_path, runs/tune)")
    tune.set_defaults(run=_tune)

    demo = commands.add_parser("demo", help="the end-to-end demo on a local Ray cluster")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    demo.add_argument("--address", default=None, help="Ray address to attach to (default: start a local cluster)")
    demo.add_argument("--from-scratch", action="store_true",
                      help="train the ADM-T base here (about 20 min on 2 CPUs) instead of using the shipped one")
    demo.add_argument("--export-base", type=Path, default=None, metavar="DIR",
                      help="with --from-scratch: also write the base as a shipped model (float16 EMA weights)")
    demo.add_argument("--finetune-steps", type=_at_least(1), default=DemoArgs.finetune_steps,
                      help=f"steps of ADM-T and of TDN from the base (identical budgets; default "
                           f"{DemoArgs.finetune_steps})")
    demo.add_argument("--per-count", type=_at_least(1), default=DemoArgs.per_count,
                      help=f"samples per count 1..5 (default {DemoArgs.per_count})")
    demo.add_argument("--sampler", choices=_LazyChoices("SAMPLERS"), default=DemoArgs.sampler, metavar="NAME",
                      help="%(choices)s (default ddim)")
    demo.add_argument("--steps", type=_at_least(1), default=DemoArgs.sample_steps, help="sampling steps (default 50)")
    demo.add_argument("--actors", type=_at_least(0), default=DemoArgs.num_actors, help="TDN's persistence actors (default 2)")
    demo.add_argument("--seed", type=_at_least(0), default=DemoArgs.seed, help="fine-tuning and sampling seed (default 0)")
    demo.add_argument("--verbose", action="store_true", help="also show Ray's own log lines")
    demo.set_defaults(run=_demo)

    pointcloud = commands.add_parser(
        "pointcloud", help="deform a 2-D point cloud towards a target's topology (Topo-GEN demos); exit 1 if not reached")
    pointcloud.add_argument("preset", help="clusters5to3, clusters2to4, segments_to_circle, or custom")
    pointcloud.add_argument("--out", type=Path, required=True, help="folder for frames, GIF, points.npy, summary.json")
    pointcloud.add_argument("--points", type=Path, default=None, help="initial cloud: JSON [[x, y], ...] or .npy [N, 2]")
    pointcloud.add_argument("--target-points", type=Path, default=None, help="target cloud, same formats")
    pointcloud.add_argument("--steps", type=_at_least(1), default=None, help="Adam steps (default: the preset's)")
    pointcloud.add_argument("--lr", type=_finite_in(0, None, open_low=True), default=None,
                            help="Adam learning rate (default: the preset's)")
    pointcloud.add_argument("--weights", default=None, metavar="W1,...,W7",
                            help="bottleneck0,bottleneck1,persentropy0,persentropy1,dsigma0,dsigma1,density")
    pointcloud.add_argument("--frame-every", type=int, default=None, help="steps between frames (default: preset's)")
    pointcloud.add_argument("--seed", type=_at_least(0), default=0, help="seed of the preset's clouds (default 0)")
    pointcloud.add_argument("--scale", type=_finite_in(0, None, open_low=True), default=None,
                            help="check scale (default: from the target)")
    pointcloud.add_argument("--no-push0", action="store_true", help="no push0 step when no loss applies")
    pointcloud.set_defaults(run=_pointcloud)
    return parser


# The arguments naming what a command writes, or reads back from an earlier job (see raytopo/job_paths.py);
# `train` and `tune` handle ray.storage_path / the space's storage_path where they read their configs.
_JOB_PATH_ARGS = {"sample": ("checkpoint", "out"), "pipeline": ("masks_from", "controlnet", "out"),
                  "export": ("checkpoint", "diffusers"), "score": ("checkpoint", "out"), "evaluate": ("folder", "out"),
                  "tune": ("storage",), "study": ("storage",), "demo": ("out", "export_base"), "data": ("out",), "pointcloud": ("out",)}


def _outlive_job(args: argparse.Namespace) -> None:
    """Inside a Ray job, put relative output paths where they outlive the job (or refuse them), in place."""
    from raytopo.job_paths import outside_job_copy

    for name in _JOB_PATH_ARGS.get(args.command, ()):
        value = getattr(args, name, None)
        if value is not None:
            flag = name if name in ("checkpoint", "folder") else f"--{name.replace('_', '-')}"
            setattr(args, name, outside_job_copy(value, flag))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else list(argv)):   # no command: what there is, not an error line
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # a bad argument (usage + one line, status 2) or --help (status 0)
        return int(exit_.code or 0)
    try:
        _outlive_job(args)
        return args.run(args)
    except RaytopoError as error:
        print(f"raytopo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
