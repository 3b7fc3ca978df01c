"""Tree structures keyed by node path (brief ``treevae.md`` section 6 "Better").

A path is a string of ``0`` (left) / ``1`` (right) from the root ``""``; a node's depth is ``len(path)``. A
structure is the JSON-able ``{"leaves": [...], "internal": [...], "pass_through": [...]}`` with every list in
breadth-first order.
"""

from __future__ import annotations

from raytopo.errors import InputError


def node_key(path: str) -> str:
    """The ModuleDict key of a node: ``"r" + path`` (a ModuleDict key cannot be empty)."""
    return "r" + path


def bfs_order(paths) -> list[str]:
    """Breadth-first, left-to-right order of node paths (by depth, then lexicographically)."""
    return sorted(paths, key=lambda p: (len(p), p))


def default_structure() -> dict[str, list[str]]:
    """The initial tree of phase 1: a root and two leaves."""
    return {"leaves": ["0", "1"], "internal": [""], "pass_through": []}


def validate_structure(structure: dict, max_depth: int) -> dict[str, list[str]]:
    """Check a ``{"leaves", "internal", "pass_through"}`` structure and return it with lists in BFS order.

    Every path is a string of ``0``/``1`` of length <= ``max_depth``; the root is present; every non-root node's
    parent is internal or pass-through; an internal node has both children, a pass-through node exactly one, a
    leaf none.
    """
    if not isinstance(structure, dict) or set(structure) != {"leaves", "internal", "pass_through"}:
        raise InputError("tree structure: expected a dict with keys 'leaves', 'internal', 'pass_through'")
    kinds: dict[str, str] = {}
    for kind in ("leaves", "internal", "pass_through"):
        for path in structure[kind]:
            if not isinstance(path, str) or set(path) - {"0", "1"} or len(path) > max_depth:
                raise InputError(f"tree structure: {path!r} is not a path of '0'/'1' of length <= {max_depth}")
            if path in kinds:
                raise InputError(f"tree structure: node {path!r} is listed twice")
            kinds[path] = kind
    if "" not in kinds:
        raise InputError("tree structure: the root '' is missing")
    expected = {"leaves": 0, "internal": 2, "pass_through": 1}
    for path, kind in kinds.items():
        if path and kinds.get(path[:-1]) not in ("internal", "pass_through"):
            raise InputError(f"tree structure: node {path!r} has no internal or pass-through parent")
        n_children = sum(path + c in kinds for c in "01")
        if n_children != expected[kind]:
            raise InputError(f"tree structure: {kind} node {path!r} has {n_children} children")
    return {kind: bfs_order(structure[kind]) for kind in ("leaves", "internal", "pass_through")}
