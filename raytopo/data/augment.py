"""Training-time augmentation (``data.augment``): flips, 90-degree rotations and random resized crops.

Every random choice is drawn from a generator seeded by ``(seed, epoch, row)``, so a row is transformed the same
way wherever it is read (in memory or on a Ray Data task) and a resumed run repeats its epoch's choices.
Flips and rotations act on the preprocessed ``[C, S, S]`` image and its mask together
(`augment_rows`); a crop cuts a random square out of the full-size file before it is resized
(`raytopo.data.folder.crop_window`), so it needs the files themselves and only runs on a stream.

Which augmentations a run may use is the family's call (`Family.augmentations_kept`): topological counts
survive flips and rotations but not crops (a crop can cut a component in two or off the image), an
equivariant model only takes the transformations of its data group, and masks always move with their images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytopo.config import Checked
from raytopo.errors import ConfigError

AUGMENTATIONS = ("hflip", "vflip", "rot90", "crop")
GEOMETRIC = frozenset({"hflip", "vflip", "rot90"})
_FLIP_STREAM, _CROP_STREAM = 1, 2


@dataclass(frozen=True)
class AugmentConfig(Checked):
    """``data.augment``: ``hflip`` / ``vflip`` (each with probability 1/2), ``rot90`` (k * 90 degrees, k uniform
    in 0..3), ``crop: [min, max]``: a random square whose side is a uniform fraction of the file's short side
    (never below ``data.image_size``), resized to ``data.image_size`` (file sources only)."""

    config_path = "data.augment"

    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    crop: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.crop is not None:
            low, high = self.crop
            if not (0 < low <= high <= 1):
                raise ConfigError(f"data.augment.crop: expected [min, max] with 0 < min <= max <= 1, got {list(self.crop)}")

    @property
    def requested(self) -> tuple[str, ...]:
        """The names of the augmentations this config turns on, in `AUGMENTATIONS` order."""
        return tuple(name for name in AUGMENTATIONS if getattr(self, name) not in (False, None))

    @property
    def geometric(self) -> bool:
        """Whether any flip or rotation is on (they run after decoding, on the square image)."""
        return bool(GEOMETRIC & set(self.requested))


def row_generator(seed: int, epoch: int, row: int, stream: int) -> np.random.Generator:
    """The generator of one row's choices in one epoch (``stream`` separates flips from crops)."""
    return np.random.default_rng((int(seed) & 0xFFFFFFFFFFFF, int(epoch), int(row), stream))


def crop_generator(seed: int, epoch: int, row: int) -> np.random.Generator:
    return row_generator(seed, epoch, row, _CROP_STREAM)


def augment_rows(arrays: dict[str, np.ndarray], rows: np.ndarray, seed: int, epoch: int,
                 config: AugmentConfig) -> dict[str, np.ndarray]:
    """``arrays`` (``image`` ``[n, C, S, S]``, optional ``mask`` ``[n, 1, S, S]``) with each row flipped and
    rotated by its own draw; the mask moves with its image. Labels are returned unchanged."""
    if not config.geometric:
        return arrays
    out = dict(arrays)
    spatial = [key for key in ("image", "mask") if key in arrays]
    for key in spatial:
        out[key] = arrays[key].copy()
    for i, row in enumerate(rows):
        rng = row_generator(seed, epoch, int(row), _FLIP_STREAM)
        hflip = config.hflip and rng.random() < 0.5
        vflip = config.vflip and rng.random() < 0.5
        turns = int(rng.integers(4)) if config.rot90 else 0
        for key in spatial:
            out[key][i] = transform(arrays[key][i], hflip, vflip, turns)
    return out


def transform(image: np.ndarray, hflip: bool, vflip: bool, turns: int) -> np.ndarray:
    """``image`` ``[..., H, W]`` mirrored left-right, then top-bottom, then turned ``turns`` x 90 degrees
    counter-clockwise."""
    if hflip:
        image = image[..., ::-1]
    if vflip:
        image = image[..., ::-1, :]
    return np.rot90(image, turns, axes=(-2, -1)) if turns else image


def group_transformations(group: str) -> frozenset[str]:
    """The geometric augmentations that lie in a symmetry group (``trivial``, ``Z2`` = horizontal flips,
    ``C4`` = quarter turns, ``D4`` = both): what keeps a ``group``-invariant data distribution invariant."""
    return {"trivial": frozenset(), "Z2": frozenset({"hflip"}), "C4": frozenset({"rot90"}),
            "D4": frozenset({"hflip", "vflip", "rot90"})}[group]
