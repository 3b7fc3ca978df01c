"""One Tune trial (the Train V2 pattern): a Tune function trainable that drives a ``TorchTrainer``.

`run_trial` builds the trial's RunConfig (base + sampled params) with its Train storage inside the trial
directory, fits a TorchTrainer whose ``ray.train.RunConfig(callbacks=[TuneReportCallback()])`` streams every
training report to Tune, then samples from the final checkpoint (``eval.per_count`` images for each target count)
and reports the family's `evaluate_model` metrics with ``ray.tune.report``, merged with the last training metrics.
A rerun of the same trial (``--resume``) continues its training from the newest checkpoint in that directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from raytopo.families.sampling import SamplerSettings
from raytopo.tune.space import TuneSpace

TRAIN_DIR_NAME = "train"
EVALUATED = "evaluated"   # set to 1 in the final result of a trial whose samples were evaluated


def run_trial(config: dict[str, Any], space: TuneSpace) -> None:
    """Tune function trainable: train with the trial's params, then evaluate the samples of its checkpoint."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytopo.checkpoint import find_latest_checkpoint
    from raytopo.train.trainer import build_trainer

    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    run = space.run_config(config, storage_path=str(trial_dir), name=TRAIN_DIR_NAME)
    result = build_trainer(run, resume_from=find_latest_checkpoint(run.run_dir),
                           callbacks=[TuneReportCallback()]).fit()
    checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else find_latest_checkpoint(run.run_dir)
    if checkpoint is None:
        raise RuntimeError(f"trial {trial_dir.name}: training finished without a checkpoint")
    scores = evaluate_checkpoint(checkpoint, space.sampler(config), space.eval.per_count, space.eval.batch_size)
    ray.tune.report({**training_metrics(result.metrics), **scores, EVALUATED: 1})


def evaluate_checkpoint(checkpoint: Path, settings: SamplerSettings, per_count: int,
                        batch_size: int) -> dict[str, float]:
    """The family's `evaluate_model` of the checkpoint's EMA weights (e.g. count accuracy of its samples)."""
    from raytopo.train.loading import load_model_for_sampling

    family, run, model = load_model_for_sampling(checkpoint)
    scores = family.evaluate_model(model, run, settings, per_count, batch_size)
    return {key: float(value) for key, value in scores.items()}


def training_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The last training report's numbers (Ray's bookkeeping such as checkpoint paths left out)."""
    return {key: value for key, value in (metrics or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}
