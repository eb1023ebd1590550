"""The Ray Data engine on a simulated two-node cluster (ray.cluster_utils.Cluster, one CPU per node), reached by
its address as `--ray-address` does: both nodes work, and the rows are the local engine's, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from ray.cluster_utils import Cluster

from dataset_helpers import CNN, digits, read_rows
from onnxlrp.datasets import run_dataset


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a worker node, one CPU each."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_two_nodes_write_the_local_rows(two_nodes, tmp_path):
    import ray
    x, y = digits(160)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    options = dict(key="images", label_column="labels", batch_size=16, shard_size=16, threads=1, progress=False)
    local = run_dataset(CNN, tmp_path / "d.npz", tmp_path / "local", **options)
    distributed = run_dataset(CNN, tmp_path / "d.npz", tmp_path / "ray", engine="ray", workers=2,
                              ray_address=two_nodes.address, stall_seconds=300, **options)
    assert not ray.is_initialized()   # the engine attached to the cluster and detached again
    assert distributed.details["cluster_nodes"] == 2 and len(distributed.details["worker_nodes"]) == 2
    assert distributed.explained == local.explained == 160
    assert read_rows(tmp_path / "ray").equals(read_rows(tmp_path / "local"))
