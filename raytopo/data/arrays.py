"""Images stored as one ``.npy`` array (e.g. a local FashionMNIST export), preprocessed like image folders.

Accepted layouts: ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` with ``C`` in {1, 3}; values uint8 in
0..255 or floats in [0, 1]. Every image goes through `raytopo.data.folder.preprocess_image` (the one
preprocessing implementation), so an array and a folder of the same pictures give the same tensors.
Optional labels: a ``.npy`` of ``N`` integers. Arrays are opened with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from raytopo.data.folder import preprocess_image
from raytopo.errors import InputError

_LAYOUTS = "[N,H,W], [N,C,H,W] or [N,H,W,C] with C in {1,3}"


def load_npy(path: str | Path, what: str, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickles (memory-mapped with ``mmap``); InputError naming a missing or bad file."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise InputError(f"{path}: expected a .npy file of {what}, found no such file") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: expected a .npy file of {what}, could not read it ({error})") from None


def as_uint8_hwc(images: np.ndarray, name: str) -> np.ndarray:
    """The array as uint8 ``[N, H, W, C]``; InputError naming ``name`` for a bad layout or value range."""
    images = check_image_array(images, name)
    return images if images.dtype == np.uint8 else (images * 255).round().astype(np.uint8)


def check_image_array(images: np.ndarray, name: str, chunk: int = 4096) -> np.ndarray:
    """``images`` viewed as ``[N, H, W, C]`` after checking layout, dtype, finiteness and range.

    Values are scanned ``chunk`` images at a time, so a memory-mapped array is checked without loading it.
    """
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise InputError(f"{name}: expected images shaped {_LAYOUTS}, got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"{name}: expected uint8 or finite float pixels, got dtype {images.dtype}")
    for start in range(0, len(images), chunk):
        part = np.asarray(images[start:start + chunk])
        if not np.isfinite(part).all():
            row = start + int(np.argmax(~np.isfinite(part.reshape(len(part), -1)).all(axis=1)))
            raise InputError(f"{name}: expected finite float pixels, image {row} has NaN or inf")
        if part.min() < 0 or part.max() > 1:
            raise InputError(f"{name}: expected float pixels in [0, 1], got [{part.min():.3g}, {part.max():.3g}] "
                             f"in images {start}..{start + len(part) - 1}")
    return images


def load_image_array(path: str | Path, image_size: int, channels: int) -> np.ndarray:
    """float32 ``[N, channels, image_size, image_size]`` in [-1, 1] from a ``.npy`` image array."""
    pixels = as_uint8_hwc(load_npy(path, "images"), str(path))
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    return np.stack([preprocess_image(Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode),
                                      image_size, channels) for image in pixels])


def load_labels(path: str | Path, count: int) -> np.ndarray:
    """int64 ``[count]`` class labels from a ``.npy`` file; InputError if the shape or values do not fit."""
    labels = load_npy(path, "integer labels")
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise InputError(f"{path}: expected {count} non-negative integer labels, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)
