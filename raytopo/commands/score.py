"""`raytopo score CHECKPOINT`: the family's own evaluation of a trained model (EMA weights).

The same numbers a Tune trial reports (`Family.evaluate_model`): count accuracy/F1/MAE of TDN samples,
distribution distances and equivariance errors of the equivariant family, held-out reconstruction losses of
the VAE pair, ...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raytopo.errors import InputError


@dataclass(frozen=True)
class ScoreArgs:
    checkpoint: Path
    sampler: Any                 # a raytopo.families.sampling.SamplerSettings
    per_count: int = 8
    batch_size: int = 16
    as_json: bool = False
    out: Path | None = None
    overwrite: bool = False
    sampler_flags: frozenset[str] = frozenset()   # the sampler flags given (checked against the family)


def run_score(args: ScoreArgs) -> int:
    """Evaluate the checkpoint; print the metrics; write them as JSON to ``args.out`` if given."""
    import torch

    from raytopo.commands.evaluate import write_json_atomic
    from raytopo.train.loading import load_model_for_sampling

    from raytopo.commands.sample import check_sampler_flags
    from raytopo.outputs import check_output, json_with_keys
    from raytopo.pretrained import resolve
    from raytopo.train.loading import checkpoint_run

    for name in ("per_count", "batch_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.out is not None:
        check_output(args.out, "--out", inputs=[resolve(args.checkpoint)], overwrite=args.overwrite,
                     owned=json_with_keys("checkpoint", "family", "sampler", "metrics"))
    check_sampler_flags(args.sampler_flags, checkpoint_run(args.checkpoint))
    family, run, model = load_model_for_sampling(args.checkpoint)
    with torch.no_grad():
        metrics = family.evaluate_model(model, run, args.sampler, args.per_count, args.batch_size)
    document = {"checkpoint": str(args.checkpoint), "family": run.family, "sampler": asdict(args.sampler),
                "metrics": {key: float(value) for key, value in metrics.items()}}
    if args.out is not None:
        write_json_atomic(document, args.out)
    if args.as_json:
        print(json.dumps(document, indent=2))
    else:
        print(f"{args.checkpoint} ({run.family}, sampler {args.sampler.name}, {args.sampler.steps} steps)")
        for key, value in sorted(document["metrics"].items()):
            print(f"  {key:<32} {value:.6g}")
    return 0
