"""Output paths, checked before any work starts: nothing a user had is ever lost or written into.

Every command that writes goes through `check_output`:

* an output is never an existing file unless ``overwrite`` is given, and then only a file raytopo itself wrote
  (``owned``) is replaced;
* it is never inside one of the command's inputs (a checkpoint folder, a data folder, a folder of masks): a
  pack written into the folder it packs would be read back as data next time;
* a folder output is never an existing file, and a file output never an existing folder;
* it must be writable: the nearest folder that exists must accept new files (a read-only place fails here in
  one line, not after an hour of training).

`safe_name` is the rule for a name that becomes a folder (``ray.name``, a sweep's or study's ``name``): one path
component, so that ``../x`` cannot write outside its storage root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from raytopo.errors import ConfigError, InputError

Owned = Callable[[Path], bool]


def check_output(path: str | Path, flag: str, *, folder: bool = False, inputs: Iterable[str | Path] = (),
                 overwrite: bool = False, owned: Owned | None = None) -> Path:
    """``path`` if it may be written (module docstring); InputError naming ``flag`` otherwise.

    Args:
        path: the output as given (a URI is not checked here: its filesystem decides).
        flag: the flag or config key that named it, for the message (``--out``).
        folder: the output is a folder (else a file).
        inputs: files and folders the command reads; the output may not be one of them or lie inside one.
        overwrite: an existing output file may be replaced (if ``owned`` says raytopo wrote it).
        owned: tells a file raytopo wrote from one it did not (default: none is raytopo's).
    """
    path = Path(path).expanduser()
    if "://" in str(path):
        return path
    resolved = path.resolve()
    for source in inputs:
        if source is None or "://" in str(source):
            continue
        source_path = Path(source).expanduser().resolve()
        if resolved == source_path or source_path in resolved.parents:
            raise InputError(f"{flag} {path}: inside the input {source}; write outputs outside what the command "
                             "reads")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: expected a folder, found a file")
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path}: expected a file, found a folder")
    if not folder and path.exists():
        if not overwrite:
            raise InputError(f"{flag} {path}: already exists; pass --overwrite to replace it, or choose a new name")
        if owned is None or not owned(path):
            raise InputError(f"{flag} {path}: already exists and raytopo did not write it; refusing to replace it")
    check_writable(path, flag)
    return path


def check_writable(path: Path, flag: str) -> None:
    """The nearest existing folder at or above ``path`` accepts new files; InputError naming ``flag`` if not."""
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write into {probe} (permission denied)")


def json_with_keys(*keys: str) -> Owned:
    """`owned` for a JSON document raytopo writes: a JSON object holding every one of ``keys``."""

    def owned(path: Path) -> bool:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        return isinstance(document, dict) and set(keys) <= set(document)

    return owned


PNG_SOFTWARE = "raytopo"


def png_by_raytopo(path: Path) -> bool:
    """`owned` for a PNG raytopo wrote (its ``Software`` text chunk says raytopo)."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return str(image.info.get("Software", "")).startswith(PNG_SOFTWARE)
    except (OSError, ValueError):
        return False


def safe_name(name: str, field: str) -> str:
    """``name`` if it is one plain path component (it becomes a folder under a storage root); ConfigError
    naming ``field`` for ``..``, a slash, an empty or hidden name."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".")
            or any(ord(c) < 32 for c in name)):
        raise ConfigError(f"{field}: expected a plain folder name (no '/', '..' or leading '.'), got {name!r}")
    return name
