"""Image folders labelled by file name, and the one image-preprocessing implementation of raytopo.

Preprocessing (improved-diffusion's ``ImageDataset``, as TDN uses it; shared with ``parquet.decode_rows``):

1. decode with PIL and convert to ``"L"`` (``channels=1``) or ``"RGB"`` (``channels=3``). Converting
   *first* (upstream converts after resizing) makes every mode work: palette and 1-bit images are then
   resized with the same filters as the rest instead of PIL's forced nearest-neighbour;
2. BOX-halve while the short side is >= ``2 * image_size``;
3. bicubic resize so the short side is ``image_size`` (long side ``round(side * scale)``; an image already
   at ``image_size`` is unchanged);
4. centre crop to ``image_size x image_size`` (offsets ``(side - image_size) // 2``);
5. ``float32`` ``x / 127.5 - 1`` in ``[-1, 1]``, shape ``[C, H, W]``.

No Ray here, and no torch at import (Ray Data read tasks import this module): :class:`ImageFolderDataset` is a
map-style dataset for ``torch.utils.data.DataLoader`` that imports torch when it is indexed.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raytopo.data.files import Entry, FileStore
from raytopo.data.labels import Label, LabelConvention, as_convention, object_index_map, parse_label
from raytopo.errors import ConfigError, InputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
_MODES = {1: "L", 3: "RGB"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class FolderIndex:
    """The image files of a folder (sorted), their parsed labels, and the object-name index map."""

    root: Path
    convention: LabelConvention
    files: tuple[Path, ...]
    labels: tuple[Label, ...]
    object_index: dict[str, int]


def scan_folder(
    root: str | Path,
    convention: LabelConvention | str,
    recursive: bool = True,
    object_index: Mapping[str, int] | None = None,
    count_limit: float | None = None,
) -> FolderIndex:
    """List the images under ``root`` and parse every label up front.

    Args:
        root: folder of images.
        convention: file-name label convention.
        recursive: also list sub-folders.
        object_index: a fixed name -> index map (e.g. the training set's, for a validation folder);
            default: :func:`~raytopo.data.labels.object_index_map` of the names found here.
        count_limit: the largest count a file name may carry (None: no bound).

    Raises:
        InputError: missing or empty folder, a file name that does not fit the convention, a count above
            ``count_limit``, or an object name missing from ``object_index``.
    """
    root = Path(root)
    names, labels, objects = label_folder(FileStore(str(root)), convention, recursive, object_index, count_limit)
    return FolderIndex(root, as_convention(convention), tuple(root / name for name in names), labels, objects)


def label_folder(
    store: FileStore,
    convention: LabelConvention | str,
    recursive: bool = True,
    object_index: Mapping[str, int] | None = None,
    count_limit: float | None = None,
) -> tuple[tuple[str, ...], tuple[Label, ...], dict[str, int]]:
    """`scan_folder` on any filesystem: the images' relative paths (sorted), their labels and the object index."""
    convention = as_convention(convention)
    if store.kind() != "dir":
        raise InputError(f"{store.root}: expected a folder of images, found no such directory")
    names = tuple(image_names(store.entries(recursive)))
    if not names:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError(f"{store.root}: expected image files ({extensions}), found none")
    locations = [store.location(name) for name in names]
    labels = tuple(parse_label(location, convention) for location in locations)
    if count_limit is not None:
        for location, label in zip(locations, labels):
            check_count_limit(label.counts, count_limit, location)
    return names, labels, _object_index(locations, labels, convention, object_index)


def image_names(entries: Iterable[Entry], depth: int | None = None) -> list[str]:
    """The relative paths of the image files among ``entries`` (at ``depth`` path parts, if given)."""
    return [entry.path for entry in entries
            if not entry.is_dir and Path(entry.path).suffix.lower() in IMAGE_EXTENSIONS
            and (depth is None or entry.path.count("/") + 1 == depth)]


def decode_image(data: bytes, image_size: int, channels: int, name: str) -> np.ndarray:
    """Decode encoded image bytes and preprocess them (module docstring): float32 ``[C, S, S]`` in [-1, 1].

    Raises:
        InputError: the bytes are not a readable image (message names ``name``).
    """
    return preprocess_image(open_image(data, name), image_size, channels)


def check_count_limit(counts: tuple[float, ...] | list[float], count_limit: float, name: str) -> None:
    """InputError naming ``name`` when a label count exceeds ``count_limit`` (``data.count_limit``)."""
    if counts and max(counts) > count_limit:
        raise InputError(f"{name}: expected counts <= {count_limit:g} (data.count_limit), got {max(counts):g}")


def read_image_bytes(path: Path) -> bytes:
    """The bytes of an image file; InputError naming ``path`` when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: expected a readable image file ({error.strerror})") from None


def open_image_file(path: Path) -> Image.Image:
    """`open_image` of the file at ``path`` (read and decode errors name it)."""
    return open_image(read_image_bytes(path), str(path))


def open_image(data: bytes, name: str) -> Image.Image:
    """A fully loaded 8-bit PIL image from encoded bytes; InputError naming ``name`` if it cannot be decoded.

    Image depth is handled here, once, for training, packing, evaluation and ``raytopo topology``: 16-bit
    grey images (PIL modes ``I;16*``) are scaled to 0..255 (``round(x / 257)``, so 65535 -> 255), not clipped;
    32-bit integer and float images (modes ``I`` and ``F``) have no agreed range and are refused.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except _DECODE_ERRORS as error:
        raise InputError(f"{name}: expected a readable image file, could not decode it ({error})") from None
    if min(image.size) < 1:
        raise InputError(f"{name}: expected a non-empty image, got size {image.size}")
    return _as_eight_bit(image, name)


def _as_eight_bit(image: Image.Image, name: str) -> Image.Image:
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.round(pixels / 257.0).astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        raise InputError(f"{name}: expected an 8- or 16-bit image, got PIL mode {image.mode} (32-bit pixels)")
    return image


def preprocess_image(image: Image.Image, image_size: int, channels: int, nearest: bool = False) -> np.ndarray:
    """Convert, BOX-halve, bicubic-resize, centre-crop and scale to [-1, 1]: float32 ``[C, S, S]``.

    ``nearest`` resizes with nearest-neighbour only (no halving, no new values): what a mask needs, so that it
    stays binary and lands on exactly the crop of its image.
    """
    return preprocess_pixels(image, image_size, channels, nearest).astype(np.float32) / 127.5 - 1


def preprocess_pixels(image: Image.Image, image_size: int, channels: int, nearest: bool = False,
                      window: tuple[int, int, int] | None = None) -> np.ndarray:
    """`preprocess_image` before the scaling: uint8 ``[C, S, S]`` (what streams carry: a quarter of the bytes).

    ``window`` ``(left, top, side)`` first cuts that square out of the image (a random resized crop,
    `crop_window`); the result is then resized and centre-cropped as any image.
    """
    _check_image_args(image_size, channels)
    image = image.convert(_MODES[channels])
    if window is not None:
        left, top, side = window
        image = image.crop((left, top, left + side, top + side))
    if nearest:
        image = image.resize(resized_size(image.size, image_size), resample=Image.Resampling.NEAREST)
    else:
        while min(image.size) >= 2 * image_size:
            image = image.resize(tuple(side // 2 for side in image.size), resample=Image.Resampling.BOX)
        image = image.resize(resized_size(image.size, image_size), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(image)
    top, left = (pixels.shape[0] - image_size) // 2, (pixels.shape[1] - image_size) // 2
    pixels = pixels[top : top + image_size, left : left + image_size]
    return np.ascontiguousarray(pixels.reshape(image_size, image_size, channels).transpose(2, 0, 1))


def crop_window(size: tuple[int, int], image_size: int, scale: tuple[float, float],
                rng: np.random.Generator) -> tuple[int, int, int]:
    """A random square ``(left, top, side)`` inside an image of ``size`` (width, height): its side a uniform
    fraction in ``scale`` of the short side, never below ``image_size`` (an image no larger than
    ``image_size`` is only shifted along its long side), at a uniform position."""
    short = min(size)
    fraction = rng.uniform(*scale)
    side = int(min(short, max(min(image_size, short), round(fraction * short))))
    left = int(rng.integers(0, size[0] - side + 1))
    top = int(rng.integers(0, size[1] - side + 1))
    return left, top, side


def resized_size(size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """The (width, height) an image of ``size`` has before the centre crop: BOX-halved while the short side is
    >= 2 * image_size, then scaled so the short side is ``image_size``."""
    while min(size) >= 2 * image_size:
        size = (size[0] // 2, size[1] // 2)
    scale = image_size / min(size)
    return (round(size[0] * scale), round(size[1] * scale))


class ImageFolderDataset:
    """Images of a folder labelled by their file names (TDN conventions), preprocessed as improved-diffusion.

    Every label is parsed at construction, so a bad name fails immediately, naming the file. Items are
    dicts: ``image`` float32 ``[C, S, S]`` in [-1, 1], ``counts`` float32 ``[k]`` (k = 1, or 2 for
    ``two_counts``; absent for the ``none`` convention) and, for ``count_object`` only, ``object`` int64 scalar (index in ``object_index``).
    """

    def __init__(
        self,
        root: str | Path,
        convention: LabelConvention | str,
        image_size: int,
        channels: int = 1,
        recursive: bool = True,
        object_index: Mapping[str, int] | None = None,
        count_limit: float | None = None,
    ) -> None:
        _check_image_args(image_size, channels)
        self.index = scan_folder(root, convention, recursive, object_index, count_limit)
        self.image_size = image_size
        self.channels = channels

    @property
    def files(self) -> tuple[Path, ...]:
        """The image files, sorted."""
        return self.index.files

    @property
    def labels(self) -> tuple[Label, ...]:
        """The parsed labels, aligned with :attr:`files`."""
        return self.index.labels

    @property
    def object_index(self) -> dict[str, int]:
        """Object name -> index (empty unless the convention is ``count_object``); store it with checkpoints."""
        return dict(self.index.object_index)

    def __len__(self) -> int:
        return len(self.index.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        path, label = self.index.files[i], self.index.labels[i]
        image = decode_image(read_image_bytes(path), self.image_size, self.channels, str(path))
        item = {"image": torch.from_numpy(image)}
        if label.counts:
            item["counts"] = torch.tensor(label.counts, dtype=torch.float32)
        if label.object_name is not None:
            item["object"] = torch.tensor(self.index.object_index[label.object_name], dtype=torch.int64)
        return item


def _object_index(
    files: Sequence[str | Path],
    labels: tuple[Label, ...],
    convention: LabelConvention,
    given: Mapping[str, int] | None,
) -> dict[str, int]:
    if convention is not LabelConvention.COUNT_OBJECT:
        return {}
    if given is None:
        return object_index_map(label.object_name for label in labels)
    for path, label in zip(files, labels):
        if label.object_name not in given:
            known = ", ".join(sorted(given))
            raise InputError(
                f"{path}: expected an object name in the given object index ({known}), got {label.object_name!r}"
            )
    return dict(given)


def _check_image_args(image_size: int, channels: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise ConfigError(f"image_size: expected an int >= 1, got {image_size!r}")
    if channels not in _MODES:
        raise ConfigError(f"channels: expected 1 or 3, got {channels!r}")
