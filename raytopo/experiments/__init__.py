"""Experiments that exercise the topology engine end to end without Ray (numpy/torch/PIL only).

``pointcloud``: Topo-GEN's synthetic demos, a learnable 2-D cloud deformed towards a target's topology.
"""

from raytopo.experiments.check import CloudTopology, TopologyCheck, count_clusters, count_loops, default_scale
from raytopo.experiments.clouds import load_cloud
from raytopo.experiments.pointcloud import (
    CUSTOM,
    PRESET_NAMES,
    PRESETS,
    DeformationResult,
    PointCloudExperiment,
    PointCloudPreset,
    deform,
    experiment_clouds,
    run_experiment,
    write_outputs,
)

__all__ = [
    "CUSTOM",
    "PRESETS",
    "PRESET_NAMES",
    "CloudTopology",
    "DeformationResult",
    "PointCloudExperiment",
    "PointCloudPreset",
    "TopologyCheck",
    "count_clusters",
    "count_loops",
    "default_scale",
    "deform",
    "experiment_clouds",
    "load_cloud",
    "run_experiment",
    "write_outputs",
]
