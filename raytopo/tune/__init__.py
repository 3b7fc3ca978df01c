"""Hyper-parameter sweeps with Ray Tune (Train V2 pattern): YAML search spaces, trial driver, Tuner and results.

* `raytopo.tune.space`: a space YAML -> validated `TuneSpace` (fails before any trial starts) -> ``param_space``;
* `raytopo.tune.trial`: `run_trial`, the Tune function trainable that fits a TorchTrainer and evaluates samples;
* `raytopo.tune.runner`: `run_sweep` (Tuner, ``Tuner.restore`` for ``--resume``), the results table, the best
  run config as YAML.

Importing this package does not import Ray; the submodules import it where they use it.
"""

from raytopo.tune.space import TuneSpace, load_space, parse_space

__all__ = ["TuneSpace", "load_space", "parse_space"]
