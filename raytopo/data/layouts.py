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

from raytopo.data.files import FileStore
from raytopo.data.folder import IMAGE_EXTENSIONS, image_names, open_image, preprocess_image, read_image_bytes
from raytopo.data.rows import ReadSpec, RowIndex, file_rows, model_arrays, read_all
from raytopo.errors import InputError


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _existing_folder(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: expected a folder of {what}")
    return root


def _folder_store(root: str | Path, what: str) -> FileStore:
    store = FileStore(str(root))
    if store.kind() != "dir":
        raise InputError(f"{root}: expected a folder of {what}")
    return store


# --- class folders -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassFolderIndex:
    """The images of a class-folder tree (sorted), their class indices, and the class names by index."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def scan_class_folders(root: str | Path) -> ClassFolderIndex:
    """List ``root/<class>/*`` images; InputError naming a stray image or an empty class folder."""
    names, labels, classes = class_folder_layout(_folder_store(root, "class folders (root/<class>/*.png)"))
    return ClassFolderIndex(tuple(Path(root) / name for name in names), labels, classes)


def class_folder_layout(store: FileStore) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """`scan_class_folders` on any filesystem: relative image paths, class indices and class names."""
    entries = store.entries(recursive=True)
    stray = image_names(entries, depth=1)
    if stray:
        raise InputError(f"{store.location(stray[0])}: expected images inside class folders "
                         f"({store.root}/<class>/), not in {store.root} itself")
    classes = [entry.path for entry in entries if entry.is_dir and "/" not in entry.path]
    if not classes:
        raise InputError(f"{store.root}: expected one sub-folder per class holding its images, found none")
    by_class: dict[str, list[str]] = {name: [] for name in classes}
    for name in image_names(entries, depth=2):
        by_class.get(name.split("/", 1)[0], []).append(name)
    files: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        if not by_class[name]:
            raise InputError(f"{store.location(name)}: expected at least one image in class folder {name!r}")
        files += by_class[name]
        labels += [index] * len(by_class[name])
    return tuple(files), tuple(labels), tuple(classes)


def class_folder_arrays(root: str | Path, image_size: int, channels: int) -> dict[str, np.ndarray]:
    """``image`` float32 ``[N, C, S, S]`` in [-1, 1] and ``label`` int64 ``[N]`` (class index, sorted names)."""
    store = _folder_store(root, "class folders (root/<class>/*.png)")
    names, labels, _ = class_folder_layout(store)
    arrays = _decoded(file_rows(store.root, names), image_size, channels)
    return {**arrays, "label": np.asarray(labels, dtype=np.int64)}


def _decoded(index: RowIndex, image_size: int, channels: int) -> dict[str, np.ndarray]:
    """Every row of ``index`` decoded by the reader training uses, as model arrays."""
    spec = ReadSpec(index.layout, index.root, image_size, channels, masks=index.has_masks)
    arrays = read_all(index, np.arange(len(index)), spec)
    return model_arrays({key: value for key, value in arrays.items() if key in ("image", "mask")})


# --- image + mask pairs ------------------------------------------------------------------------------------------


def _key(stem: str) -> str:
    """The part after the first ``_`` (``Img_7`` -> ``7``); the whole stem when it has none."""
    return stem.split("_", 1)[1] if "_" in stem else stem


def pair_images_and_masks(root: str | Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs from ``root/images`` and ``root/masks`` (module docstring for the pairing rule)."""
    store = _folder_store(root, "pairs (root/images/ and root/masks/)")
    return [(Path(root) / image, Path(root) / mask) for image, mask in pair_layout(store)]


def pair_layout(store: FileStore) -> list[tuple[str, str]]:
    """`pair_images_and_masks` on any filesystem: ``(image, mask)`` relative paths."""
    entries = store.entries(recursive=True)
    folders = {entry.path for entry in entries if entry.is_dir}
    for folder in ("images", "masks"):
        if folder not in folders:
            raise InputError(f"{store.location(folder)}: expected a folder (image + mask pairs live in "
                             f"{store.root}/images and {store.root}/masks)")
    images = [name for name in image_names(entries, depth=2) if name.startswith("images/")]
    masks = [name for name in image_names(entries, depth=2) if name.startswith("masks/")]
    image_dir, mask_dir = store.location("images"), store.location("masks")
    if not images:
        raise InputError(f"{image_dir}: expected at least one image")
    by_stem = {_stem(mask): mask for mask in masks}
    by_key: dict[str, list[str]] = {}
    for mask in masks:
        by_key.setdefault(_key(_stem(mask)), []).append(mask)
    pairs, unpaired = [], []
    for image in images:
        stem = _stem(image)
        if stem in by_stem:
            pairs.append((image, by_stem[stem]))
            continue
        candidates = by_key.get(_key(stem), [])
        if len(candidates) > 1:
            raise InputError(f"{store.location(image)}: expected one mask in {mask_dir} named {stem}.* or <prefix>_"
                             f"{_key(stem)}.*, found {', '.join(c.split('/')[-1] for c in candidates)}")
        if candidates:
            pairs.append((image, candidates[0]))
        else:
            unpaired.append(image)
    if not pairs:
        image = unpaired[0]
        raise InputError(f"{store.location(image)}: expected one mask in {mask_dir} named {_stem(image)}.* or "
                         f"<prefix>_{_key(_stem(image))}.*, found none (no image of {image_dir} has a mask)")
    if unpaired:
        shown = ", ".join(p.split("/")[-1] for p in unpaired[:5]) + (", ..." if len(unpaired) > 5 else "")
        print(f"raytopo: warning: {len(unpaired)} of {len(images)} images in {image_dir} have no mask and are "
              f"skipped: {shown}", file=sys.stderr)
    return pairs


def _stem(relative: str) -> str:
    return Path(relative).stem


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
    store = _folder_store(root, "pairs (root/images/ and root/masks/)")
    pairs = pair_layout(store)
    index = file_rows(store.root, [image for image, _ in pairs], masks=[mask for _, mask in pairs])
    return _decoded(index, image_size, channels)


def read_mask_folder(folder: str | Path, image_size: int) -> np.ndarray:
    """Every mask image in ``folder`` (sorted) as float32 ``[N, 1, S, S]`` in {-1, 1} (`decode_mask`)."""
    folder = _existing_folder(folder, "masks")
    files = _images_in(folder)
    if not files:
        raise InputError(f"{folder}: expected mask images (.png, .jpg, ...), found none")
    return np.stack([load_mask(path, image_size) for path in files])
