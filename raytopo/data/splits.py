"""Three disjoint splits of a file data set: training, evaluation and the judges' (no Ray here).

* **train**: what the model is fitted on;
* **eval**: what every "held-out" figure is computed on (`raytopo.data.sources.held_out_arrays`): the rows of
  ``data.eval_path`` when it is given, else a ``data.eval_fraction`` of ``data.path``;
* **judge**: what raytopo's judges (the classifier and segmenter that score generated images) train on, a
  ``data.judge_fraction`` of ``data.path``.

Units (single files, array rows, parquet row groups) are ranked by a hash of ``(data.seed, unit name)``: the
first ``ceil(eval_fraction * units)`` go to eval, the next ``ceil(judge_fraction * units)`` to the judges, the
rest to training. A split is therefore disjoint from the others by construction, exactly sized, the same on
every node and in every process, and a unit keeps its split when files are added to the folder (only units
near the boundaries can move). Generated sources have no files to split: their eval and judge images are
fresh seeded draws (`raytopo.data.sources`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

from raytopo.errors import InputError

SPLITS = ("train", "eval", "judge")
TRAIN, EVAL, JUDGE = 0, 1, 2


def unit_ranks(keys: Sequence[str], seed: int) -> np.ndarray:
    """Each unit's place in the seeded hash order (0 = first)."""
    scores = np.array([int.from_bytes(hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest(), "big")
                       for key in keys], dtype=np.uint64)
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[np.argsort(scores, kind="stable")] = np.arange(len(keys))
    return ranks


def split_units(keys: Sequence[str], seed: int, eval_fraction: float, judge_fraction: float,
                where: str = "data.path") -> np.ndarray:
    """The split (`TRAIN`, `EVAL`, `JUDGE`) of every unit; at least one unit always trains.

    Raises:
        InputError: the fractions leave no unit for training (``where`` names the data set).
    """
    count = len(keys)
    evaluation = math.ceil(eval_fraction * count) if eval_fraction > 0 else 0
    judges = math.ceil(judge_fraction * count) if judge_fraction > 0 else 0
    if evaluation + judges >= count:
        raise InputError(f"{where}: {count} units cannot give {evaluation} to evaluation (data.eval_fraction "
                         f"{eval_fraction:g}) and {judges} to the judges (data.judge_fraction {judge_fraction:g}) "
                         "and still train on one; add data or lower the fractions")
    ranks = unit_ranks(keys, seed)
    split = np.full(count, TRAIN, dtype=np.int8)
    split[ranks < evaluation] = EVAL
    split[(ranks >= evaluation) & (ranks < evaluation + judges)] = JUDGE
    return split
