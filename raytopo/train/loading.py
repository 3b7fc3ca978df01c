"""A trained model ready to sample: family, run config and EMA weights rebuilt from a checkpoint directory.

Used by `raytopo sample`, `score`, the demo, Tune trials and the benches; the checkpoint's own ``config.json``
rebuilds the model (strict load), so no run flags are repeated.
"""

from __future__ import annotations

from pathlib import Path

from raytopo.checkpoint import load_checkpoint, load_weights


def checkpoint_run(checkpoint: Path):
    """(family, run config) of a checkpoint from its ``config.json`` alone: what a command checks its arguments
    against before it pays for loading weights."""
    from raytopo.checkpoint import load_checkpoint_config
    from raytopo.registry import get_family

    run = checkpoint_config(checkpoint, load_checkpoint_config(checkpoint))
    return get_family(run.family), run


def checkpoint_config(checkpoint: Path, plain: dict):
    """A checkpoint's run config parsed; a config.json that is not a valid run config names the file."""
    from raytopo.errors import ConfigError, InputError
    from raytopo.pretrained import resolve
    from raytopo.train.config import parse_run_config

    try:
        return parse_run_config(plain)
    except ConfigError as error:
        raise InputError(f"{resolve(checkpoint) / 'config.json'}: not a run config raytopo can read ({error})") from None


def load_model_for_sampling(checkpoint: Path):
    """(family, run config, model with EMA weights) from a checkpoint directory."""
    from raytopo.registry import get_family

    data = load_checkpoint(checkpoint, with_optimizer=False)
    run = checkpoint_config(checkpoint, data.config)
    family = get_family(run.family)
    model = family.build(run, data.structure or None)
    load_weights(model, data.ema, checkpoint)
    return family, run, model.eval()
