"""Folder layouts whose labels live in the folder structure rather than the file names.

* **Class folders** (``data.source: class_folder``): ``root/<class>/*.png``. Classes are the sub-folders that
  hold images, numbered in sorted name order (``label`` int64); an image directly in ``root`` or an empty class
  folder is an error naming it.
* **Image + mask pairs** (``data.source: image_mask``): ``root/images/*`` and ``root/masks/*``. An image pairs
  with the mask of the same file stem, else with the mask whose stem has the same part after the first ``_``
  (``Img_7.png`` <-> ``seg_7.png``, the reference ControlNet's naming). Masks are resized with nearest-neighbour
  onto exactly the crop of their image (`raytopo.data.folder.preprocess_image`), and binarised: ``mask``
  float32 ``[1, S, S]`` in {-1, 1} (a pixel above half brightness is foreground).

Both load every image with the one preprocessing implementation of `raytopo.data.folder`, so what the driver's
check decodes is what the workers train on. No Ray here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytopo.data.folder import IMAGE_EXTENSIONS, open_image, open_image_file, preprocess_image, read_image_bytes
from raytopo.errors import InputError
from raytopo.progress import progress


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _existing_folder(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: expected a folder of {what}")
    return root


# --- class folders -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassFolderIndex:
    """The images of a class-folder tree (sorted), their class indices, and the class names by index."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def scan_class_folders(root: str | Path) -> ClassFolderIndex:
    """List ``root/<class>/*`` images; InputError naming a stray image or an empty class folder."""
    root = _existing_folder(root, "class folders (root/<class>/*.png)")
    stray = _images_in(root)
    if stray:
        raise InputError(f"{stray[0]}: expected images inside class folders ({root}/<class>/), not in {root} itself")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: expected one sub-folder per class holding its images, found none")
    files, labels = [], []
    for index, folder in enumerate(classes):
        images = _images_in(folder)
        if not images:
            raise InputError(f"{folder}: expected at least one image in class folder {folder.name!r}")
        files += images
        labels += [index] * len(images)
    return ClassFolderIndex(tuple(files), tuple(labels), tuple(folder.name for folder in classes))


def class_folder_arrays(root: str | Path, image_size: int, channels: int) -> dict[str, np.ndarray]:
    """``image`` float32 ``[N, C, S, S]`` in [-1, 1] and ``label`` int64 ``[N]`` (class index, sorted names)."""
    index = scan_class_folders(root)
    images = [preprocess_image(open_image_file(path), image_size, channels) for path in index.files]
    return {"image": np.stack(images), "label": np.asarray(index.labels, dtype=np.int64)}


def check_class_folders(root: str | Path) -> int:
    """The layout, and every image decodes; returns the image count."""
    index = scan_class_folders(root)
    for path in progress(index.files, f"checking {root}"):
        open_image_file(path)
    return len(index.files)


# --- image + mask pairs ------------------------------------------------------------------------------------------


def _key(stem: str) -> str:
    """The part after the first ``_`` (``Img_7`` -> ``7``); the whole stem when it has none."""
    return stem.split("_", 1)[1] if "_" in stem else stem


def pair_images_and_masks(root: str | Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs from ``root/images`` and ``root/masks`` (module docstring for the pairing rule)."""
    root = _existing_folder(root, "pairs (root/images/ and root/masks/)")
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise InputError(f"{folder}: expected a folder (image + mask pairs live in {root}/images and {root}/masks)")
    images, masks = _images_in(image_dir), _images_in(mask_dir)
    if not images:
        raise InputError(f"{image_dir}: expected at least one image")
    by_stem = {mask.stem: mask for mask in masks}
    by_key: dict[str, list[Path]] = {}
    for mask in masks:
        by_key.setdefault(_key(mask.stem), []).append(mask)
    pairs, unpaired = [], []
    for image in images:
        if image.stem in by_stem:
            pairs.append((image, by_stem[image.stem]))
            continue
        candidates = by_key.get(_key(image.stem), [])
        if len(candidates) > 1:
            raise InputError(f"{image}: expected one mask in {mask_dir} named {image.stem}.* or <prefix>_"
                             f"{_key(image.stem)}.*, found {', '.join(c.name for c in candidates)}")
        if candidates:
            pairs.append((image, candidates[0]))
        else:
            unpaired.append(image)
    if not pairs:
        image = unpaired[0]
        raise InputError(f"{image}: expected one mask in {mask_dir} named {image.stem}.* or <prefix>_"
                         f"{_key(image.stem)}.*, found none (no image of {image_dir} has a mask)")
    if unpaired:
        shown = ", ".join(p.name for p in unpaired[:5]) + (", ..." if len(unpaired) > 5 else "")
        print(f"raytopo: warning: {len(unpaired)} of {len(images)} images in {image_dir} have no mask and are "
              f"skipped: {shown}", file=sys.stderr)
    return pairs


def decode_mask(data: bytes, image_size: int, name: str) -> np.ndarray:
    """Encoded mask bytes as float32 ``[1, S, S]`` in {-1, 1}, resized with nearest-neighbour onto its image's
    crop (a pixel above half brightness is foreground)."""
    grey = preprocess_image(open_image(data, name), image_size, 1, nearest=True)
    return np.where(grey > 0, 1.0, -1.0).astype(np.float32)


def load_mask(path: Path, image_size: int) -> np.ndarray:
    """The mask file at ``path`` (`decode_mask`)."""
    return decode_mask(read_image_bytes(path), image_size, str(path))


def image_mask_arrays(root: str | Path, image_size: int, channels: int) -> dict[str, np.ndarray]:
    """``image`` float32 ``[N, C, S, S]`` in [-1, 1] and ``mask`` float32 ``[N, 1, S, S]`` in {-1, 1}."""
    pairs = pair_images_and_masks(root)
    images = [preprocess_image(open_image_file(image), image_size, channels) for image, _ in pairs]
    masks = [load_mask(mask, image_size) for _, mask in pairs]
    return {"image": np.stack(images), "mask": np.stack(masks)}


def check_image_mask_pairs(root: str | Path) -> int:
    """Every image has exactly one mask, and both decode; returns the pair count."""
    pairs = pair_images_and_masks(root)
    for image, mask in progress(pairs, f"checking {root}"):
        size, mask_size = open_image_file(image).size, open_image_file(mask).size
        if size != mask_size:
            raise InputError(f"{mask}: the mask is {mask_size[0]}x{mask_size[1]} but its image {image.name} is "
                             f"{size[0]}x{size[1]}; expected the same size")
    return len(pairs)


def read_mask_folder(folder: str | Path, image_size: int) -> np.ndarray:
    """Every mask image in ``folder`` (sorted) as float32 ``[N, 1, S, S]`` in {-1, 1} (`decode_mask`)."""
    folder = _existing_folder(folder, "masks")
    files = _images_in(folder)
    if not files:
        raise InputError(f"{folder}: expected mask images (.png, .jpg, ...), found none")
    return np.stack([load_mask(path, image_size) for path in files])
