"""A trained model ready to sample: family, run config and EMA weights rebuilt from a checkpoint directory.

Used by `raytopo sample`, `score`, the demo, Tune trials and the benches; the checkpoint's own ``config.json``
rebuilds the model (strict load), so no run flags are repeated.
"""

from __future__ import annotations

from pathlib import Path

from raytopo.checkpoint import load_checkpoint, load_weights


def load_model_for_sampling(checkpoint: Path):
    """(family, run config, model with EMA weights) from a checkpoint directory."""
    from raytopo.registry import get_family
    from raytopo.train.config import parse_run_config

    data = load_checkpoint(checkpoint, with_optimizer=False)
    run = parse_run_config(data.config)
    family = get_family(run.family)
    model = family.build(run, data.structure or None)
    load_weights(model, data.ema, checkpoint)
    return family, run, model.eval()
