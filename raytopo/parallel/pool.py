"""PersistencePool: apply a per-item function (default: cubical persistence) to a batch on CPU actors.

The TDN training step hands a detached copy of the predicted clean images to this pool and keeps the
GPU busy while CPU actors (on this node or on CPU-only nodes) compute one result per image
(docs/references.md, Design 3). The same API runs in-process when Ray is not initialised or ``num_actors == 0``.

How a call works
----------------
* **Validation first.** ``batch`` is a numpy array ``[B, ...]`` or a tuple of arrays with the same leading
  dimension (e.g. predictions and ground truths; ``fn(*items_i, **kwargs)`` is called). An empty batch,
  NaN/inf values, a non-numeric dtype, mismatched leading dimensions, or (for the default cubical
  function) anything but a ``[B, H, W]`` array raises :class:`~raytopo.errors.InputError` before anything
  is sent to Ray.
* **Torch tensors never cross Ray.** A tensor is converted to numpy (``detach().cpu().numpy()``) in the
  caller: a tensor crosses the object store 2-6x slower than the same numpy array (it is pickled rather
  than read zero-copy; docs/references.md, Design 3).
* **The batch crosses the object store once.** The caller ``ray.put``s the batch once; each actor gets the
  ObjectRef plus a contiguous ``(start, stop)`` range and slices its share of a zero-copy, read-only view.
  There is one chunk per actor (fewer if ``B < num_actors``). Items of one batch cost about the same, so
  equal contiguous chunks are balanced; more chunks would only add round trips.
* **Items are read-only** in both modes (object-store arrays are immutable; the in-process path passes
  read-only views so behaviour matches): ``fn`` must copy before writing.
* **fn must be loadable by the actors.** Ray pickles a function by reference to its module, so that module
  must be importable on the workers (the ``raytopo`` package, a ``runtime_env`` working_dir, or
  ``ray.cloudpickle.register_pickle_by_value(module)``); if it is not, Ray raises ``RaySystemError`` and
  the pool raises a RaytopoError saying so. Functions defined in ``__main__`` are pickled by value.
* **Results** keep their order: ``result[i] == fn(batch[i], **kwargs)``. Keep them small and numpy (a
  :class:`~raytopo.topology.diagrams.Diagram` is fine; torch tensors are not).

Fault tolerance
---------------
* An actor that dies while computing a chunk (``ray.exceptions.RayActorError``; in Ray 2.60 an
  ``os._exit`` or a kill surfaces as its subclass ``ActorDiedError``) is replaced by a fresh actor and the
  chunk is submitted again, up to ``max_retries`` times per chunk; after that a
  :class:`~raytopo.errors.RaytopoError` names the chunk and the reason. Actors are created with
  ``max_restarts=0``: the pool replaces them itself, so it can count retries per chunk.
* An exception raised by ``fn`` (bad data) is not retried: Ray wraps it in a ``RayTaskError``; the caller
  gets the *original* exception (same type and message, with a note naming the item index), chained
  from the ``RayTaskError`` that carries the remote traceback. The pool stays usable.

Lifetime
--------
The pool never calls ``ray.init``: the trainer or CLI owns the Ray lifetime. Whether a call runs on actors
is decided per call (:attr:`PersistencePool.in_process`). Actors are created eagerly when the pool is
built with Ray initialised (their start-up overlaps the caller's own set-up), otherwise lazily at the
first call that finds Ray initialised; they are reused across calls until :meth:`PersistencePool.close`.
Close the pool before ``ray.shutdown()``. Each actor reserves ``cpus_per_actor`` CPUs plus
``resources`` (e.g. ``{"persistence": 1}`` to place actors on CPU nodes that declare that resource) and
limits OMP/MKL/OpenBLAS/torch threads to its CPU share.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Union

import numpy as np
import ray
from ray.exceptions import RayActorError, RaySystemError, RayTaskError

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError, RaytopoError
from raytopo.topology.cubical import cubical_persistence

Batch = Union[np.ndarray, tuple]
"""A numpy array ``[B, ...]`` (or torch tensor), or a tuple of them with the same leading dimension."""

_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class PoolConfig(Checked):
    """How many persistence actors to run and where.

    Attributes:
        num_actors: number of actors; 0 runs every call in-process (no Ray).
        cpus_per_actor: CPUs each actor reserves (may be fractional); also its thread limit (at least 1).
        resources: custom Ray resources each actor reserves, e.g. ``{"persistence": 1}`` to place the
            actors on CPU nodes that declare that resource instead of the trainer's node.
        max_retries: how many times a chunk is resubmitted to a fresh actor when its actor dies.
    """

    num_actors: int = 2
    cpus_per_actor: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    max_retries: int = 3

    def __post_init__(self) -> None:
        _check_int("num_actors", self.num_actors)
        _check_int("max_retries", self.max_retries)
        if not _is_real(self.cpus_per_actor) or not self.cpus_per_actor > 0:
            raise ConfigError(
                f"PoolConfig.cpus_per_actor: expected a number > 0, got {self.cpus_per_actor!r}"
            )
        if not isinstance(self.resources, dict):
            raise ConfigError(
                f"PoolConfig.resources: expected a dict of name -> amount, got {self.resources!r}"
            )
        for name, amount in self.resources.items():
            if not isinstance(name, str) or name in ("CPU", "GPU", "memory"):
                raise ConfigError(
                    f"PoolConfig.resources: expected custom resource names (not CPU/GPU/memory), got {name!r}"
                )
            if not _is_real(amount) or not amount >= 0:
                raise ConfigError(f"PoolConfig.resources[{name!r}]: expected a number >= 0, got {amount!r}")
        object.__setattr__(self, "resources", dict(self.resources))


def _is_real(value: Any) -> bool:
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return is_number and math.isfinite(value)


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"PoolConfig.{name}: expected an integer >= 0, got {value!r}")


# ----------------------------------------------------------------------------------------------------
# Work done on one chunk (shared by the actor and the in-process path)


def _apply(fn: Callable, arrays: tuple[np.ndarray, ...], start: int, stop: int, kwargs: dict) -> list:
    """``[fn(*(a[i] for a in arrays), **kwargs) for i in start..stop)]``; an error notes the item index."""
    results = []
    for i in range(start, stop):
        try:
            results.append(fn(*(a[i] for a in arrays), **kwargs))
        except Exception as err:
            err.add_note(f"PersistencePool: raised by {_name(fn)} on batch item {i}")
            raise
    return results


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _thread_limit(cpus: float) -> int:
    return max(1, int(cpus))


def _limit_torch_threads(n: int) -> None:
    """Limit torch's intra-op threads if ``fn`` has imported torch (never imports it here)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


class _PersistenceWorker:
    """A Ray actor that applies ``fn`` to its share of a batch held in the object store."""

    def __init__(self, num_threads: int) -> None:
        self._num_threads = num_threads
        for var in _THREAD_ENV_VARS:
            os.environ[var] = str(num_threads)
        _limit_torch_threads(num_threads)

    def run(self, arrays: tuple[np.ndarray, ...], start: int, stop: int, fn: Callable, kwargs: dict) -> list:
        """``fn`` applied to items ``start..stop`` of ``arrays`` (resolved from the batch's ObjectRef)."""
        _limit_torch_threads(self._num_threads)
        return _apply(fn, arrays, start, stop, kwargs)


_RemoteWorker = ray.remote(_PersistenceWorker)


# ----------------------------------------------------------------------------------------------------
# Input validation (in the caller, before anything crosses Ray)


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor (detached, on CPU); else InputError."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise InputError(f"{name}: expected a numpy array or torch tensor [B, ...], got {type(value).__name__}")


def _check_array(array: np.ndarray, name: str) -> None:
    if array.ndim == 0 or array.shape[0] == 0:
        raise InputError(f"{name}: expected a non-empty batch [B, ...] with B >= 1, got shape {array.shape}")
    if array.dtype.kind not in "biufc":
        raise InputError(f"{name}: expected numeric values, got dtype {array.dtype}")
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise InputError(f"{name}: expected finite values, found NaN or inf")


def _validated_batch(batch: Any, image_fn: bool) -> tuple[np.ndarray, ...]:
    """The batch as a tuple of checked numpy arrays with the same leading dimension."""
    if isinstance(batch, tuple):
        if not batch:
            raise InputError("batch: expected an array or a non-empty tuple of arrays, got an empty tuple")
        names = [f"batch[{k}]" for k in range(len(batch))]
    else:
        batch, names = (batch,), ["batch"]
    arrays = tuple(_to_numpy(value, name) for value, name in zip(batch, names))
    for array, name in zip(arrays, names):
        _check_array(array, name)
    leading = {array.shape[0] for array in arrays}
    if len(leading) > 1:
        shapes = ", ".join(str(array.shape) for array in arrays)
        raise InputError(f"batch: expected arrays with the same leading dimension B, got shapes {shapes}")
    if image_fn:
        _check_image_batch(arrays)
    return arrays


def _check_image_batch(arrays: tuple[np.ndarray, ...]) -> None:
    if len(arrays) != 1:
        raise InputError(
            f"batch: expected one image array [B, H, W] for cubical persistence, got {len(arrays)} arrays"
        )
    shape = arrays[0].shape
    if len(shape) != 3 or 0 in shape:
        raise InputError(
            f"batch: expected an image batch of shape [B, H, W] for cubical persistence, got shape {shape}"
        )


def _read_only(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    views = []
    for array in arrays:
        view = array.view()
        view.flags.writeable = False
        views.append(view)
    return tuple(views)


def _chunk_bounds(num_items: int, num_chunks: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges covering ``0..num_items``, sizes differing by at most one."""
    num_chunks = max(1, min(num_chunks, num_items))
    base, extra = divmod(num_items, num_chunks)
    bounds, start = [], 0
    for k in range(num_chunks):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


# ----------------------------------------------------------------------------------------------------
# The future


@dataclass(frozen=True)
class _Chunk:
    index: int
    slot: int
    start: int
    stop: int


class PoolFuture:
    """The pending result of :meth:`PersistencePool.submit`.

    ``result()`` gathers the chunks in order, replacing dead actors and resubmitting their chunks;
    ``done()`` never blocks (it also resubmits chunks whose actor died, so it may return False again).
    """

    def __init__(self) -> None:
        self._results: list | None = None
        self._error: BaseException | None = None
        self._pool: PersistencePool | None = None
        self._batch_ref: ray.ObjectRef | None = None
        self._fn: Callable | None = None
        self._kwargs: dict = {}
        self._chunk_results: list[list | None] = []
        self._attempts: list[int] = []
        self._pending: dict[ray.ObjectRef, tuple[_Chunk, Any]] = {}

    @classmethod
    def _completed(cls, results: list | None, error: BaseException | None = None) -> PoolFuture:
        future = cls()
        future._results, future._error = results, error
        return future

    @classmethod
    def _on_actors(
        cls, pool: PersistencePool, batch_ref: ray.ObjectRef, chunks: list[_Chunk], fn: Callable, kwargs: dict
    ) -> PoolFuture:
        future = cls()
        future._pool, future._batch_ref, future._fn, future._kwargs = pool, batch_ref, fn, kwargs
        future._chunk_results = [None] * len(chunks)
        future._attempts = [0] * len(chunks)
        for chunk in chunks:
            future._launch(chunk)
        return future

    def done(self) -> bool:
        """True when ``result()`` would return or raise without waiting."""
        if not self._finished():
            self._step(timeout=0, num_returns=len(self._pending))
        return self._finished()

    def result(self, timeout: float | None = None) -> list:
        """The results in batch order; waits at most ``timeout`` seconds (TimeoutError after that).

        Raises the original exception of ``fn``, or RaytopoError when a chunk's actor died more than
        ``max_retries`` times. A TimeoutError leaves the future usable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"PersistencePool: result not ready after {timeout} s")
            self._step(timeout=remaining, num_returns=1)
        if self._error is not None:
            raise self._error
        return self._results

    def _finished(self) -> bool:
        return self._results is not None or self._error is not None

    def _launch(self, chunk: _Chunk) -> None:
        actor = self._pool._actor(chunk.slot)
        ref = actor.run.remote(self._batch_ref, chunk.start, chunk.stop, self._fn, self._kwargs)
        self._pending[ref] = (chunk, actor)

    def _step(self, timeout: float | None, num_returns: int) -> None:
        """Wait for up to ``num_returns`` chunks and collect those that are ready."""
        ready, _ = ray.wait(list(self._pending), num_returns=num_returns, timeout=timeout)
        for ref in ready:
            if self._error is None:
                self._collect(ref)

    def _collect(self, ref: ray.ObjectRef) -> None:
        chunk, actor = self._pending.pop(ref)
        try:
            self._chunk_results[chunk.index] = ray.get(ref)
        except RayActorError as err:
            self._retry(chunk, actor, err)
        except RayTaskError as err:
            if isinstance(err.cause, RaySystemError):  # Ray could not even start fn (arguments not loadable)
                self._fail(self._unrunnable(chunk, err.cause))
            else:
                self._fail(_original_exception(err))
        except RaySystemError as err:
            self._fail(self._unrunnable(chunk, err))
        except Exception as err:  # anything else from Ray (object lost, ...): fail, never hang
            self._fail(err)
        else:
            if all(r is not None for r in self._chunk_results):
                self._results = [item for part in self._chunk_results for item in part]
                self._release()

    def _unrunnable(self, chunk: _Chunk, err: RaySystemError) -> RaytopoError:
        """The error for a chunk whose call the actor could not even deserialize (fn's module missing)."""
        error = RaytopoError(
            f"PersistencePool: {_where(chunk)}: Ray could not run {_name(self._fn)} on its actor "
            f"({_first_line(err)}); is the module defining fn importable on the workers?"
        )
        return _chained(error, err)

    def _retry(self, chunk: _Chunk, actor: Any, err: RayActorError) -> None:
        self._attempts[chunk.index] += 1
        if self._pool.closed:
            closed = RaytopoError(f"PersistencePool: closed before {_where(chunk)} finished")
            self._fail(_chained(closed, err))
            return
        self._pool._replace_actor(chunk.slot, actor)
        if self._attempts[chunk.index] > self._pool.config.max_retries:
            exhausted = RaytopoError(
                f"PersistencePool: {_where(chunk)} failed {self._attempts[chunk.index]} times "
                f"(max_retries={self._pool.config.max_retries}): its actor died: {_first_line(err)}"
            )
            self._fail(_chained(exhausted, err))
            return
        self._launch(chunk)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._release()

    def _release(self) -> None:
        """Drop the batch and pending refs so the object store can free them."""
        self._pending.clear()
        self._batch_ref = None
        self._chunk_results = []


def _original_exception(err: RayTaskError) -> BaseException:
    """The exception ``fn`` raised (same type), chained from Ray's wrapper with the remote traceback."""
    cause = err.cause if isinstance(err.cause, BaseException) else err.as_instanceof_cause()
    cause.__cause__ = err
    return cause


def _where(chunk: _Chunk) -> str:
    return f"chunk {chunk.index} (items {chunk.start}:{chunk.stop})"


def _chained(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------------
# The pool


class PersistencePool:
    """A pool of Ray actors applying a per-item function to every item of a batch, in order.

    Args:
        config: number of actors, CPUs and custom resources per actor, retries per chunk.
        fn: picklable callable of one item (or one item of each array of a tuple batch) plus keyword
            arguments. Default: :func:`raytopo.topology.cubical.cubical_persistence`, which expects image
            batches ``[B, H, W]``.
        **fn_kwargs: keyword arguments for ``fn`` (e.g. ``maxdim=0, filtration="superlevel"``).

    A per-call ``fn`` replaces the pool's ``fn`` *and* its keyword arguments; per-call keyword arguments
    without ``fn`` are merged over the pool's. See the module docstring for lifetime and fault tolerance.
    """

    def __init__(
        self, config: PoolConfig | None = None, fn: Callable | None = None, **fn_kwargs: Any
    ) -> None:
        config = PoolConfig() if config is None else config
        if not isinstance(config, PoolConfig):
            raise ConfigError(f"config: expected a PoolConfig, got {type(config).__name__}")
        self.config = config
        self._fn = cubical_persistence if fn is None else _checked_fn(fn)
        self._fn_kwargs = _checked_kwargs(self._fn, fn_kwargs)
        self._actors: list[Any] = []
        self.closed = False
        if not self.in_process:
            self._start_actors()

    @property
    def in_process(self) -> bool:
        """True when calls run in this process: ``num_actors == 0`` or Ray is not initialised."""
        return self.config.num_actors == 0 or not ray.is_initialized()

    @property
    def num_actors(self) -> int:
        """The number of actors a call uses now (0 when running in-process)."""
        return 0 if self.in_process else self.config.num_actors

    def map(self, batch: Batch, fn: Callable | None = None, **fn_kwargs: Any) -> list:
        """``[fn(batch[i], **kwargs) for i in range(B)]`` (``fn(*items_i)`` for a tuple batch); blocks."""
        return self.submit(batch, fn, **fn_kwargs).result()

    def submit(self, batch: Batch, fn: Callable | None = None, **fn_kwargs: Any) -> PoolFuture:
        """Start :meth:`map` and return at once; in-process the future is already completed.

        Raises InputError for a bad batch before anything is sent; errors of ``fn`` come from ``result()``.
        """
        if self.closed:
            raise RaytopoError("PersistencePool: used after close()")
        fn, kwargs = self._call_fn(fn, fn_kwargs)
        arrays = _validated_batch(batch, image_fn=fn is cubical_persistence)
        if self.in_process:
            return _run_in_process(fn, arrays, kwargs)
        self._start_actors()
        chunks = [
            _Chunk(index=k, slot=k, start=start, stop=stop)
            for k, (start, stop) in enumerate(_chunk_bounds(arrays[0].shape[0], self.config.num_actors))
        ]
        return PoolFuture._on_actors(self, ray.put(arrays), chunks, fn, kwargs)

    def close(self) -> None:
        """Kill the actors; the pool cannot be used afterwards. Safe to call twice."""
        self.closed = True
        actors, self._actors = self._actors, []
        if ray.is_initialized():
            for actor in actors:
                _kill(actor)

    def __enter__(self) -> PersistencePool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PersistencePool(num_actors={self.num_actors}, fn={_name(self._fn)}, closed={self.closed})"

    def _call_fn(self, fn: Callable | None, fn_kwargs: dict) -> tuple[Callable, dict]:
        if fn is None:
            return self._fn, {**self._fn_kwargs, **_checked_kwargs(self._fn, fn_kwargs)}
        fn = _checked_fn(fn)
        return fn, _checked_kwargs(fn, fn_kwargs)

    def _start_actors(self) -> None:
        """Create the missing actors (asynchronously: creation returns before the processes start)."""
        if not self._actors:
            _warn_if_resources_missing(self.config.resources)
        while len(self._actors) < self.config.num_actors:
            self._actors.append(self._new_actor())

    def _new_actor(self) -> Any:
        # "DEFAULT": never captured into the caller's placement group. Inside a Tune trial (whose group captures
        # child tasks) Ray passes the capture on to Train workers, whose bundles have no room for these actors.
        options = dict(num_cpus=self.config.cpus_per_actor, max_restarts=0, max_task_retries=0,
                       scheduling_strategy="DEFAULT")
        if self.config.resources:
            options["resources"] = dict(self.config.resources)
        return _RemoteWorker.options(**options).remote(_thread_limit(self.config.cpus_per_actor))

    def _actor(self, slot: int) -> Any:
        return self._actors[slot]

    def _replace_actor(self, slot: int, dead: Any) -> None:
        """Replace the actor in ``slot`` if it is still ``dead`` (another chunk may have replaced it)."""
        if self._actors[slot] is dead:
            _kill(dead)
            self._actors[slot] = self._new_actor()


def _checked_fn(fn: Any) -> Callable:
    if not callable(fn):
        raise InputError(f"fn: expected a callable of one batch item, got {type(fn).__name__}")
    return fn


def _checked_kwargs(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` when ``fn`` accepts every one of them; a ConfigError at once otherwise (not at the first call,
    on an actor). A misplaced PoolConfig field (``PersistencePool(num_actors=2)``) is named as such."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return dict(kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return dict(kwargs)
    keywords = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(kwargs) - keywords)
    if unknown:
        name = unknown[0]
        if name in {f.name for f in fields(PoolConfig)}:
            raise ConfigError(f"{name}: a PoolConfig field, not a keyword of {_name(fn)}; "
                              f"use PersistencePool(PoolConfig({name}=...))")
        raise ConfigError(f"{name}: not a keyword argument of {_name(fn)} (it takes {', '.join(sorted(keywords))})")
    return dict(kwargs)


def _run_in_process(fn: Callable, arrays: tuple[np.ndarray, ...], kwargs: dict) -> PoolFuture:
    """Compute eagerly; an exception of ``fn`` is kept and raised by ``result()``, as on actors."""
    try:
        results = _apply(fn, _read_only(arrays), 0, arrays[0].shape[0], kwargs)
    except Exception as err:
        return PoolFuture._completed(None, err)
    return PoolFuture._completed(results)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead or Ray shutting down: nothing left to free
        pass


def _warn_if_resources_missing(resources: dict[str, float]) -> None:
    available = ray.cluster_resources()
    missing = sorted(name for name, amount in resources.items() if amount > 0 and name not in available)
    if missing:
        warnings.warn(
            f"PersistencePool: no node has resource(s) {missing}; actors wait until such a node joins",
            stacklevel=4,
        )
