"""Shared by the job entry points: make the submitted code importable, then run one `raytopo` subcommand.

``ray job submit --working-dir . -- python jobs/train.py ...`` runs the script from the uploaded copy of the
repository (the job's working directory). Python puts ``jobs/`` on ``sys.path``, not the repository root, so
the root is inserted first: the code that was submitted is the code that runs, whether or not raytopo is
also pip-installed on the cluster (Ray also prepends the working directory to ``PYTHONPATH`` for the tasks and
actors the job starts, so training workers and persistence actors import the same copy).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_importable(root: Path = REPO_ROOT) -> None:
    """Put ``root`` first on ``sys.path`` when it holds the raytopo package."""
    if (root / "raytopo" / "__init__.py").is_file() and str(root) not in sys.path[:1]:
        sys.path.insert(0, str(root))


def run(subcommand: str, argv: Sequence[str] | None = None) -> int:
    """``raytopo SUBCOMMAND ARGV...``; prints one line saying which raytopo and which cluster it uses."""
    make_importable()
    import raytopo
    from raytopo.cli import main

    args = list(sys.argv[1:] if argv is None else argv)
    address = os.environ.get("RAY_ADDRESS", "a new local cluster")
    print(f"[raytopo job] {subcommand}: raytopo from {Path(raytopo.__file__).resolve().parent}, "
          f"Ray at {address}", file=sys.stderr, flush=True)
    return main([subcommand, *args])
