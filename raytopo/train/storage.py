"""Where a run's outputs live: a local path or a URI that pyarrow's filesystems understand.

``ray.storage_path`` may be a directory (``runs``, ``/mnt/shared/runs``) or a URI (``s3://bucket/runs``,
``gs://...``, ``file:///...``). Ray Train writes its checkpoints there itself. What raytopo writes on its own
(TensorBoard logs, local-mode checkpoints) is first written to a local working directory on the node and, for
URI storage, mirrored to ``<storage>/<name>/...`` with pyarrow (after every checkpoint and at the end).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from raytopo.checkpoint import find_latest_checkpoint


def is_uri(path: str) -> bool:
    return "://" in path


def storage_root(storage_path: str) -> str:
    """A URI unchanged, or the absolute local path (what Ray's RunConfig gets)."""
    return storage_path if is_uri(storage_path) else str(Path(storage_path).expanduser().resolve())


def run_location(storage_path: str, name: str) -> str:
    """``<storage>/<name>``: the run's directory or URI."""
    return f"{storage_root(storage_path).rstrip('/')}/{name}"


def local_work_dir(storage_path: str, name: str) -> Path:
    """Where this node writes the run's own files: the run directory itself, or local scratch for URIs."""
    if is_uri(storage_path):
        digest = hashlib.sha1(run_location(storage_path, name).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "raytopo-runs" / digest / name
    return Path(run_location(storage_path, name))


def publish(local: Path, storage_path: str, name: str, relative: str) -> None:
    """Mirror ``local`` to ``<storage>/<name>/<relative>`` when storage is a URI (no-op for local storage)."""
    if not is_uri(storage_path) or not local.exists():
        return
    import pyarrow.fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(f"{run_location(storage_path, name)}/{relative}")
    filesystem.create_dir(root, recursive=True)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)


def run_exists(storage_path: str, name: str) -> bool:
    """Whether ``<storage>/<name>`` already holds anything (a directory with files, or any object under a URI)."""
    location = run_location(storage_path, name)
    if not is_uri(storage_path):
        return Path(location).is_dir() and any(Path(location).iterdir())
    import pyarrow.fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(location)
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return False
    return bool(filesystem.get_file_info(pafs.FileSelector(root, recursive=False)))


def latest_checkpoint(storage_path: str, name: str) -> Path | None:
    """The newest checkpoint of a run as a local directory (downloaded first for URI storage), or None."""
    location = run_location(storage_path, name)
    if not is_uri(storage_path):
        return find_latest_checkpoint(location) if Path(location).is_dir() else None
    import pyarrow.fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(location)
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return None
    states = [info.path for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
              if info.base_name == "state.json" and "/." not in info.path]
    if not states:
        return None
    newest = max(states, key=lambda path: json.loads(filesystem.open_input_file(path).read())["step"])
    target = Path(tempfile.mkdtemp(prefix="raytopo-resume-")) / "checkpoint"
    target.mkdir()
    pafs.copy_files(newest.rsplit("/", 1)[0], str(target), source_filesystem=filesystem,
                    destination_filesystem=pafs.LocalFileSystem())
    return target
