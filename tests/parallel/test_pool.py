"""PersistencePool: results equal the in-process computation, in order; dead actors are replaced.

Ray runs once for the module (``address="local"``, 2 CPUs, 2 units of a custom ``persistence``
resource). Two module-wide pools (1 and 2 actors at 0.25 CPU each) serve most tests; tests that kill
actors build their own pool at 0.5 CPU per actor, so everything fits in the 2 CPUs at once.
The per-item functions below are module-level; the actors cannot import this test module (pytest puts
its folder on the driver's sys.path only), so the module is registered to be pickled by value.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from raytopo.errors import ConfigError, InputError, RaytopoError
from raytopo.parallel import PersistencePool, PoolConfig, PoolFuture
from raytopo.topology.cubical import cubical_persistence

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# ----------------------------------------------------------------------------------------------------
# Per-item functions sent to the actors


def _value_and_pid(x: np.ndarray) -> tuple[float, int]:
    return float(np.sum(x)), os.getpid()


def _pid(x: np.ndarray) -> int:
    return os.getpid()


def _double(x: np.ndarray) -> np.ndarray:
    return x * 2


def _weighted_error(pred: np.ndarray, target: np.ndarray, scale: float = 1.0) -> float:
    return float(scale * np.abs(pred - target).sum())


def _type_and_sum(x: np.ndarray) -> tuple[str, float]:
    return type(x).__name__, float(x.sum())


def _fail_on(x: np.ndarray, bad: float) -> float:
    if x.flat[0] == bad:
        raise ValueError(f"cannot process an item starting with {bad}")
    return float(x.sum())


def _die_once(x: np.ndarray, marker: str, victim: float) -> tuple[float, int]:
    """Kill this worker process the first time the victim item is seen (the marker file records it)."""
    if x.flat[0] == victim and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return float(np.sum(x)), os.getpid()


def _die_always(x: np.ndarray, log: str, victim: float) -> float:
    """Kill this worker process on the victim item, appending a line to ``log`` per death."""
    if x.flat[0] == victim:
        with open(log, "a") as f:
            f.write("died\n")
        os._exit(1)
    return float(np.sum(x))


def _wait_for_file(x: np.ndarray, gate: str) -> float:
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate file {gate} never appeared")
        time.sleep(0.01)
    return float(np.sum(x))


def _assigned_resources(x: np.ndarray) -> dict[str, float]:
    return dict(ray.get_runtime_context().get_assigned_resources())


# ----------------------------------------------------------------------------------------------------
# Helpers


def _images(b: int, seed: int = 0, h: int = 12, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).random((b, h, w)).astype(np.float32)


def _rows(b: int) -> np.ndarray:
    """Items whose first value is their index, so a function can single out one item."""
    return np.arange(b * 3, dtype=np.float64).reshape(b, 3) / 3.0


def _assert_same_diagrams(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for got_item, want_item in zip(actual, expected):
        assert [d.dim for d in got_item] == [d.dim for d in want_item]
        for got, want in zip(got_item, want_item):
            np.testing.assert_array_equal(got.births, want.births)
            np.testing.assert_array_equal(got.deaths, want.deaths)
            np.testing.assert_array_equal(got.birth_cells, want.birth_cells)
            np.testing.assert_array_equal(got.death_cells, want.death_cells)


# ----------------------------------------------------------------------------------------------------
# Without Ray (these run first, before the module's Ray fixture starts)


def test_without_ray_runs_in_process_and_equals_a_direct_loop() -> None:
    assert not ray.is_initialized(), "this test must run before the module's Ray fixture"
    images = _images(5)
    pool = PersistencePool(maxdim=0)
    assert pool.in_process and pool.num_actors == 0

    _assert_same_diagrams(pool.map(images), [cubical_persistence(im, maxdim=0) for im in images])
    assert all(len(diagrams) == 1 for diagrams in pool.map(images))
    # per-call kwargs are merged over the pool's
    _assert_same_diagrams(pool.map(images, maxdim=1), [cubical_persistence(im) for im in images])

    future = pool.submit(images, filtration="superlevel")
    assert isinstance(future, PoolFuture) and future.done()
    expected = [cubical_persistence(im, maxdim=0, filtration="superlevel") for im in images]
    _assert_same_diagrams(future.result(), expected)
    assert pool.map(images, fn=_pid) == [os.getpid()] * 5


def test_constructor_keywords_the_function_does_not_take_fail_at_once() -> None:
    """A PoolConfig field passed as a keyword (a common slip) is named as such, before any actor or call."""
    with pytest.raises(ConfigError, match=r"^num_actors: a PoolConfig field, not a keyword of cubical_persistence"):
        PersistencePool(num_actors=2)
    with pytest.raises(ConfigError, match=r"^max_dim: not a keyword argument of cubical_persistence \(it takes"):
        PersistencePool(max_dim=0)
    pool = PersistencePool(maxdim=0)
    with pytest.raises(ConfigError, match=r"^bad: not a keyword argument of cubical_persistence"):
        pool.map(_images(2), bad=1)
    assert PersistencePool(fn=lambda item, **options: options).map(_rows(1), anything=1) == [{"anything": 1}]


def test_without_ray_fn_errors_come_from_result_with_the_item_index() -> None:
    pool = PersistencePool()
    future = pool.submit(_rows(4), fn=_fail_on, bad=2.0)
    assert future.done()
    with pytest.raises(ValueError, match="starting with 2.0") as excinfo:
        future.result()
    assert "PersistencePool: raised by _fail_on on batch item 2" in excinfo.value.__notes__
    assert pool.map(_rows(4), fn=_fail_on, bad=-1.0) == [float(r.sum()) for r in _rows(4)]


# ----------------------------------------------------------------------------------------------------
# With Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, resources={"persistence": 2})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool1(ray_cluster):
    with PersistencePool(PoolConfig(num_actors=1, cpus_per_actor=0.25)) as pool:
        yield pool


@pytest.fixture(scope="module")
def pool2(ray_cluster):
    with PersistencePool(PoolConfig(num_actors=2, cpus_per_actor=0.25)) as pool:
        yield pool


@pytest.mark.parametrize("num_actors", [1, 2])
@pytest.mark.parametrize("batch_size", [7, 1])
def test_ray_map_equals_in_process_in_order(request, num_actors: int, batch_size: int) -> None:
    pool = request.getfixturevalue(f"pool{num_actors}")
    assert not pool.in_process and pool.num_actors == num_actors
    images = _images(batch_size, seed=batch_size)
    expected = PersistencePool(PoolConfig(num_actors=0)).map(images)

    _assert_same_diagrams(pool.map(images), expected)
    _assert_same_diagrams(pool.map(images, maxdim=0), [d[:1] for d in expected])


def test_actors_compute_contiguous_chunks_and_are_reused(pool2) -> None:
    first = pool2.map(_rows(7), fn=_pid)
    second = pool2.map(_rows(7), fn=_pid)
    assert first == second
    assert os.getpid() not in first
    # items 0..3 on one actor, 4..6 on the other
    assert len(set(first[:4])) == 1 and len(set(first[4:])) == 1 and first[0] != first[4]


def test_num_actors_zero_runs_in_process_with_ray_up(ray_cluster) -> None:
    pool = PersistencePool(PoolConfig(num_actors=0))
    assert pool.in_process and pool.num_actors == 0
    assert pool.map(_rows(3), fn=_pid) == [os.getpid()] * 3


def test_submit_returns_a_future_equal_to_map(pool2) -> None:
    images = _images(6, seed=3)
    future = pool2.submit(images)
    assert isinstance(future, PoolFuture)
    expected = [cubical_persistence(im) for im in images]  # other work while the actors compute
    _assert_same_diagrams(future.result(), expected)
    assert future.done()
    _assert_same_diagrams(future.result(), pool2.map(images))


def test_future_is_not_done_until_its_chunks_finish(pool2, tmp_path) -> None:
    gate = tmp_path / "gate"
    future = pool2.submit(_rows(5), fn=_wait_for_file, gate=str(gate))
    assert not future.done()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)
    gate.touch()
    assert future.result() == [float(r.sum()) for r in _rows(5)]
    assert future.done()


def test_tuple_batch_calls_fn_with_one_item_of_each_array(pool2) -> None:
    preds, targets = _images(7, seed=1), _images(7, seed=2)
    expected = [_weighted_error(p, t, scale=2.0) for p, t in zip(preds, targets)]
    assert pool2.map((preds, targets), fn=_weighted_error, scale=2.0) == expected
    in_process = PersistencePool(PoolConfig(num_actors=0))
    assert in_process.map((preds, targets), fn=_weighted_error, scale=2.0) == expected
    with pytest.raises(InputError, match="same leading dimension"):
        pool2.map((preds, targets[:6]), fn=_weighted_error)


def test_torch_tensors_arrive_as_numpy(pool2) -> None:
    torch = pytest.importorskip("torch")
    images = _images(3, seed=4)
    tensor = torch.from_numpy(images).requires_grad_(True)
    results = pool2.map(tensor, fn=_type_and_sum)
    assert [name for name, _ in results] == ["ndarray"] * 3
    assert [value for _, value in results] == [float(im.sum()) for im in images]
    _assert_same_diagrams(pool2.map(tensor), [cubical_persistence(im) for im in images])


def test_fn_error_is_reraised_as_the_original_type_and_pool_keeps_working(pool2) -> None:
    rows = _rows(7)
    with pytest.raises(ValueError, match="starting with 5.0") as excinfo:
        pool2.map(rows, fn=_fail_on, bad=5.0)
    assert type(excinfo.value) is ValueError
    assert "PersistencePool: raised by _fail_on on batch item 5" in excinfo.value.__notes__
    assert isinstance(excinfo.value.__cause__, ray.exceptions.RayTaskError)  # carries the remote traceback
    assert pool2.map(rows, fn=_fail_on, bad=-1.0) == [float(r.sum()) for r in rows]


BAD_BATCHES = {
    "nan": (lambda: np.where(np.eye(8)[None] > 0, np.nan, 0.0).repeat(2, 0), None, "finite"),
    "inf": (lambda: np.full((2, 8, 8), np.inf), None, "finite"),
    "rank 2 image batch": (lambda: np.zeros((8, 8)), None, r"\[B, H, W\]"),
    "empty": (lambda: np.zeros((0, 8, 8)), None, "non-empty"),
    "empty tuple": (lambda: (), _weighted_error, "non-empty tuple"),
    "list": (lambda: [np.zeros((8, 8))], None, "numpy array or torch tensor"),
    "object dtype": (lambda: np.array([object()] * 2), _double, "numeric"),
    "nan, custom fn": (lambda: np.array([1.0, np.nan]), _double, "finite"),
    "inf in 2nd array": (
        lambda: (np.zeros(2), np.array([0.0, np.inf])),
        _weighted_error,
        r"batch\[1\]: expected finite",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_inputs_raise_before_anything_is_sent(pool2, monkeypatch, case: str) -> None:
    make_batch, fn, message = BAD_BATCHES[case]

    def no_put(*args, **kwargs):
        raise AssertionError("the batch reached ray.put")

    with monkeypatch.context() as patch:
        patch.setattr(ray, "put", no_put)
        with pytest.raises(InputError, match=message):
            pool2.submit(make_batch(), fn=fn)
    with pytest.raises(InputError, match=message):
        PersistencePool(PoolConfig(num_actors=0)).map(make_batch(), fn=fn)
    assert pool2.map(np.arange(3.0), fn=_double) == [0.0, 2.0, 4.0]  # custom fn: any rank >= 1


def test_actor_killed_mid_batch_is_replaced_and_its_chunk_retried(ray_cluster, tmp_path) -> None:
    rows = _rows(7)
    marker = tmp_path / "died"
    with PersistencePool(PoolConfig(num_actors=2, cpus_per_actor=0.5, max_retries=2)) as pool:
        before = pool.map(rows, fn=_pid)
        results = pool.map(rows, fn=_die_once, marker=str(marker), victim=5.0)
        assert marker.exists()  # the actor holding items 4..6 really died
        assert [value for value, _ in results] == [float(r.sum()) for r in rows]
        pids = [pid for _, pid in results]
        assert pids[:4] == before[:4]  # the other actor was untouched
        assert len(set(pids[4:])) == 1 and pids[4] not in before  # the chunk ran again on a fresh actor
        assert pool.map(rows, fn=_pid) == pids  # the replacement is reused


def test_actor_that_always_dies_raises_after_max_retries(ray_cluster, tmp_path) -> None:
    rows = _rows(7)
    log = tmp_path / "deaths"
    with PersistencePool(PoolConfig(num_actors=2, cpus_per_actor=0.5, max_retries=1)) as pool:
        with pytest.raises(RaytopoError, match=r"chunk 1 \(items 4:7\) failed 2 times \(max_retries=1\)"):
            pool.map(rows, fn=_die_always, log=str(log), victim=5.0)
        assert log.read_text().count("died") == 2  # first attempt + one retry
        assert [v for v, _ in pool.map(rows, fn=_value_and_pid)] == [float(r.sum()) for r in rows]


def test_fn_from_a_module_the_actors_cannot_import_raises_a_clear_error(
    pool2, tmp_path, monkeypatch
) -> None:
    (tmp_path / "driver_only_module.py").write_text(textwrap.dedent('''
        def triple(x):
            return x * 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_only_module

    with pytest.raises(RaytopoError, match=r"could not run triple .*No module named 'driver_only_module'"):
        pool2.map(_rows(3), fn=driver_only_module.triple)
    assert pool2.map(np.arange(3.0), fn=_double) == [0.0, 2.0, 4.0]


def test_custom_resource_places_actors_on_nodes_that_declare_it(ray_cluster) -> None:
    config = PoolConfig(num_actors=2, cpus_per_actor=0.25, resources={"persistence": 1})
    with PersistencePool(config) as pool:
        assigned = pool.map(_rows(4), fn=_assigned_resources)
    assert [a.get("persistence") for a in assigned] == [1.0] * 4
    assert [a.get("CPU") for a in assigned] == [0.25] * 4


def test_missing_custom_resource_warns(ray_cluster) -> None:
    config = PoolConfig(num_actors=1, cpus_per_actor=0.25, resources={"absent_resource": 1})
    with pytest.warns(UserWarning, match="absent_resource"):
        PersistencePool(config).close()


def test_closed_pool_refuses_work(ray_cluster) -> None:
    pool = PersistencePool(PoolConfig(num_actors=1, cpus_per_actor=0.25))
    pool.close()
    pool.close()
    with pytest.raises(RaytopoError, match="after close"):
        pool.map(_rows(2), fn=_double)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_actors": -1}, "num_actors"),
        ({"num_actors": 1.5}, "num_actors"),
        ({"cpus_per_actor": 0}, "cpus_per_actor"),
        ({"resources": {"CPU": 1}}, "resources"),
        ({"resources": {"persistence": -1}}, "resources"),
        ({"max_retries": True}, "max_retries"),
    ],
)
def test_bad_config_raises_config_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"PoolConfig.{field}"):
        PoolConfig(**kwargs)


def test_bad_fn_or_config_type_is_rejected() -> None:
    with pytest.raises(InputError, match="fn: expected a callable"):
        PersistencePool(PoolConfig(num_actors=0), fn="cubical")
    with pytest.raises(ConfigError, match="config: expected a PoolConfig"):
        PersistencePool({"num_actors": 2})
