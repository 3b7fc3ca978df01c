"""Point-cloud deformation experiments: the topology check, cloud files, config, push0 fallback, presets."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from raytopo.errors import ConfigError, InputError
from raytopo.experiments import (
    PRESETS,
    PointCloudExperiment,
    count_clusters,
    count_loops,
    deform,
    default_scale,
    experiment_clouds,
    load_cloud,
    run_experiment,
)
from raytopo.topology.regularisers import TopologicalRegulariser, TopoRegulariserConfig
from raytopo.topology.rips import rips_persistence


def h0_of(points):
    return rips_persistence(np.asarray(points, dtype=np.float64), maxdim=0)[0]


# ------------------------------------------------------------------------------------------------ the check


def test_count_clusters_on_constructed_clusters():
    offsets = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.5, 0.5]])  # a unit-0.5 square of 4 points
    cloud = np.concatenate([offsets + centre for centre in ([0, 0], [10, 0], [0, 20])])
    h0 = h0_of(cloud)
    assert count_clusters(h0, 1.0) == 3   # within-cluster edges 0.5, clusters >= 10 apart
    assert count_clusters(h0, 0.4) == 12  # below the smallest distance every point is its own cluster
    assert count_clusters(h0, 15.0) == 2  # (0,0)-(10,0) merge at ~9.5; (0,20) is ~19.5 from the rest
    assert count_clusters(h0, 100.0) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_clusters_matches_scipy_connected_components(seed):
    rng = np.random.default_rng(seed)
    cloud = rng.uniform(0, 10, size=(60, 2))
    distances = cdist(cloud, cloud)
    h0 = h0_of(cloud)
    for scale in (0.3, 0.7, 1.0, 1.5, 3.0):
        expected, _ = connected_components(distances <= scale, directed=False)
        assert count_clusters(h0, scale) == expected


def test_count_loops_on_a_regular_polygon_closed_form():
    # 12 points evenly on a circle of radius r: the loop is born at the side 2r sin(pi/12) and dies when the
    # inscribed equilateral triangles (side r*sqrt(3)) fill it.
    r = 2.0
    angles = 2 * np.pi * np.arange(12) / 12
    cloud = r * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    h1 = rips_persistence(cloud, maxdim=1)[1]
    persistence = r * (math.sqrt(3) - 2 * math.sin(math.pi / 12))
    assert count_loops(h1, persistence - 1e-6) == 1
    assert count_loops(h1, persistence + 1e-6) == 0


def test_default_scale_is_the_middle_of_the_widest_gap():
    three = np.array([[5.0, 5.0], [10.0, 10.0], [20.0, 6.0]])  # deaths sqrt(50), sqrt(116); diameter sqrt(226)
    assert default_scale(three) == pytest.approx(math.sqrt(50) / 2)
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(scale=0.1, size=(20, 2)) + c for c in ([0, 0], [8, 0])])
    scale = default_scale(blobs)
    assert 1.0 < scale < 7.0 and count_clusters(h0_of(blobs), scale) == 2
    line = np.stack([np.arange(10.0), np.zeros(10)], axis=1)  # one chain: the diameter gap wins
    assert count_clusters(h0_of(line), default_scale(line)) == 1


# ---------------------------------------------------------------------------------------------------- files


def test_load_cloud_reads_json_and_npy(tmp_path):
    points = [[0.0, 1.0], [2.5, -3.0], [4.0, 4.0]]
    (tmp_path / "c.json").write_text(json.dumps(points))
    np.save(tmp_path / "c.npy", np.array(points, dtype=np.float32))
    for name in ("c.json", "c.npy"):
        cloud = load_cloud(tmp_path / name)
        assert cloud.dtype == np.float64 and cloud.tolist() == points


@pytest.mark.parametrize("name, content, expected", [
    ("missing.json", None, "not found"),
    ("wide.json", [[1, 2, 3], [4, 5, 6]], "expected shape [N, 2]"),
    ("one.json", [[1, 2]], "expected shape [N, 2]"),
    ("ragged.json", [[1, 2], [3]], "numeric"),
    ("nan.npy", np.array([[0.0, np.nan], [1.0, 1.0]]), "finite"),
    ("flat.npy", np.zeros(6), "expected shape [N, 2]"),
    ("points.txt", "1 2\n3 4\n", "unknown extension"),
])
def test_load_cloud_rejects_bad_files_with_one_line(tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))
    with pytest.raises(InputError) as error:
        load_cloud(path)
    message = str(error.value)
    assert str(path) in message and expected in message and "\n" not in message


# --------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, field", [
    ({"steps": 0}, "steps"),
    ({"lr": -0.1}, "lr"),
    ({"frame_every": 0}, "frame_every"),
    ({"scale": 0.0}, "scale"),
    ({"preset": "spiral"}, "preset"),
    ({"preset": "custom"}, "points_file"),
    ({"regulariser": TopoRegulariserConfig(weights=(1, 0, 0, 0, 0, 0, 0), maxdim=0)}, "regulariser.maxdim"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        PointCloudExperiment(**overrides)
    assert str(error.value).startswith(field)


def test_for_preset_takes_the_preset_defaults_and_overrides():
    experiment = PointCloudExperiment.for_preset("segments_to_circle", weights=(0, 1, 0, 0, 0, 0, 0), steps=7, lr=None)
    preset = PRESETS["segments_to_circle"]
    assert (experiment.steps, experiment.lr, experiment.frame_every) == (7, preset.lr, preset.frame_every)
    assert experiment.regulariser.weights == (0, 1, 0, 0, 0, 0, 0)


# ---------------------------------------------------------------------------------------------------- push0


def _unreachable_pair():
    """Two points 0.1 apart against a target pair 10 apart: bottleneck0 matches the target bar to the diagonal
    (cost 5 < 9.9), so its worst pair does not involve the learnable cloud: gotloss False."""
    return np.array([[0.0, 0.0], [0.1, 0.0]]), np.array([[0.0, 0.0], [10.0, 0.0]])


def test_push0_fallback_triggers_when_no_loss_applies():
    points, target = _unreachable_pair()
    regulariser = TopologicalRegulariser(TopoRegulariserConfig(weights=(1, 0, 0, 0, 0, 0, 0)))
    _, got = regulariser(torch.tensor(points, requires_grad=True), torch.tensor(target))
    assert not got

    lr, steps = 0.1, 5
    experiment = PointCloudExperiment(preset="clusters5to3", regulariser=regulariser.config, steps=steps, lr=lr,
                                      scale=1.0)
    result = deform(points, target, experiment)
    assert (result.push0_steps, result.idle_steps) == (steps, 0)
    # push0 = -d/2 has a constant gradient along x: Adam moves each point by exactly lr per step, apart.
    assert np.linalg.norm(result.points[1] - result.points[0]) == pytest.approx(0.1 + 2 * lr * steps, rel=1e-6)
    assert result.losses[0] == pytest.approx(-0.05)

    still = deform(points, target, PointCloudExperiment(regulariser=regulariser.config, steps=steps, lr=lr,
                                                        scale=1.0, push0_fallback=False))
    assert (still.push0_steps, still.idle_steps) == (0, steps)
    np.testing.assert_array_equal(still.points, points)


# -------------------------------------------------------------------------------------------------- presets

EXPECTED_TARGETS = {"clusters5to3": (3, 0), "clusters2to4": (4, 0), "segments_to_circle": (1, 1)}


def _assert_preset_reaches_its_target(name):
    result = run_experiment(PointCloudExperiment.for_preset(name))
    target = result.check.target
    assert (target.clusters, target.loops) == EXPECTED_TARGETS[name]
    assert result.reached_at_step is not None and result.reached_at_step > 0  # the start was not the target
    assert result.check.reached, result.check.as_dict()


@pytest.mark.parametrize("name", ["clusters5to3", "clusters2to4"])
def test_cluster_presets_reach_their_target(name):
    _assert_preset_reaches_its_target(name)


@pytest.mark.slow
def test_circle_preset_reaches_its_target():
    _assert_preset_reaches_its_target("segments_to_circle")


def test_preset_clouds_are_seeded():
    a = PointCloudExperiment.for_preset("clusters2to4", seed=3)
    first, again, other = experiment_clouds(a), experiment_clouds(a), experiment_clouds(
        PointCloudExperiment.for_preset("clusters2to4", seed=4))
    np.testing.assert_array_equal(first[0], again[0])
    assert first[0].shape == (64, 2) and first[1].shape == (128, 2)
    assert not np.array_equal(first[0], other[0])
