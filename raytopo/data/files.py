"""Files on any pyarrow filesystem: a local path, ``file://``, ``s3://``, ``gs://`` (no Ray here).

A `FileStore` is a data set's root folder, opened once: it lists the files under it (relative POSIX paths,
sorted) and reads one file's bytes. Every file data source lists and reads through it, so a folder on S3 is
read exactly like a local one. A relative local path is made absolute where the store is opened (on the
driver), so a training worker running in another working directory reads the same files.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from raytopo.errors import InputError


def is_uri(path: str) -> bool:
    """Whether ``path`` names a filesystem by scheme (``s3://bucket/x``, ``file:///x``)."""
    return "://" in str(path)


def absolute_location(path: str) -> str:
    """``path`` as a location that means the same file on every node: URIs as given, local paths absolute."""
    return str(path) if is_uri(path) else os.path.abspath(os.path.expanduser(str(path)))


@dataclass(frozen=True)
class Entry:
    """One listed item under a store's root: its relative POSIX path and whether it is a folder."""

    path: str
    is_dir: bool


class FileStore:
    """The folder (or single file) at ``root`` on its pyarrow filesystem."""

    def __init__(self, root: str) -> None:
        from pyarrow import fs

        self.root = absolute_location(root)
        try:
            if is_uri(self.root):
                self.filesystem, self.base = fs.FileSystem.from_uri(self.root)
            else:
                self.filesystem, self.base = fs.LocalFileSystem(), self.root
        except (OSError, ValueError) as error:
            raise InputError(f"{root}: expected a path or a URI pyarrow can open ({error})") from None
        self.base = self.base.rstrip("/") or "/"

    def __reduce__(self) -> tuple[Any, ...]:      # picklable by its root (filesystems reopen per process)
        return (open_store, (self.root,))

    def kind(self, relative: str = "") -> str:
        """``"file"``, ``"dir"`` or ``"missing"``."""
        from pyarrow import fs

        info = self.filesystem.get_file_info(self._full(relative))
        return {fs.FileType.File: "file", fs.FileType.Directory: "dir"}.get(info.type, "missing")

    def entries(self, recursive: bool = True) -> list[Entry]:
        """Everything under the root (files and folders), sorted by relative path; hidden names skipped."""
        from pyarrow import fs

        if self.kind() != "dir":
            raise InputError(f"{self.root}: expected a folder, found no such directory")
        selector = fs.FileSelector(self.base, recursive=recursive)
        found = []
        for info in self.filesystem.get_file_info(selector):
            relative = info.path[len(self.base):].lstrip("/")
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            found.append(Entry(relative, info.type == fs.FileType.Directory))
        return sorted(found, key=lambda entry: entry.path)

    def read(self, relative: str = "") -> bytes:
        """The bytes of one file; InputError naming it when it cannot be read."""
        try:
            with self.filesystem.open_input_stream(self._full(relative)) as stream:
                return stream.read()
        except (OSError, ValueError) as error:
            raise InputError(f"{self.location(relative)}: expected a readable file ({error})") from None

    def open(self, relative: str = "") -> Any:
        """A random-access pyarrow file (for parquet footers and row groups)."""
        try:
            return self.filesystem.open_input_file(self._full(relative))
        except (OSError, ValueError) as error:
            raise InputError(f"{self.location(relative)}: expected a readable file ({error})") from None

    def location(self, relative: str = "") -> str:
        """The full name of a file under the root, as the user would write it (for messages and ids)."""
        return f"{self.root.rstrip('/')}/{relative}" if relative else self.root

    def _full(self, relative: str) -> str:
        return f"{self.base.rstrip('/')}/{relative}" if relative else self.base


@functools.lru_cache(maxsize=16)
def open_store(root: str) -> FileStore:
    """The `FileStore` of ``root``, opened once per process (Ray Data read tasks reuse it)."""
    return FileStore(root)
