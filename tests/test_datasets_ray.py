"""The Ray Data engine on a local Ray of two CPUs, with as many actors as CPUs (the configuration that deadlocked
with whole-CPU actors): it finishes, and writes the local engine's rows and failures, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import ray

from dataset_helpers import CNN, digits, read_rows, write_pixels_parquet
from onnxlrp.datasets import run_dataset
from onnxlrp.datasets.manifest import load_manifest, read_failures
from onnxlrp.datasets.ray_engine import actor_plan
from onnxlrp.errors import OnnxLrpError


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: two CPUs."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_as_many_actors_as_cpus_finish_with_the_local_rows(local_ray, tmp_path):
    x, y = digits(200)
    write_pixels_parquet(tmp_path / "d.parquet", x, y, {7: x[7].reshape(-1)[:60]})
    options = dict(column="pixels", label_column="label", target="label", batch_size=16, shard_size=32,
                   threads=1, progress=False)
    local = run_dataset(CNN, tmp_path / "d.parquet", tmp_path / "local", **options)
    distributed = run_dataset(CNN, tmp_path / "d.parquet", tmp_path / "ray", engine="ray", workers=2,
                              stall_seconds=300, **options)
    assert (distributed.explained, distributed.failed) == (local.explained, local.failed) == (199, 1)
    assert distributed.details["num_cpus"] == 0.9 and ray.cluster_resources()["CPU"] == 2
    assert read_rows(tmp_path / "ray").equals(read_rows(tmp_path / "local"))
    assert ray.data.read_parquet(str(tmp_path / "ray")).count() == 199   # Ray reads OUT/ as it is
    assert read_failures(tmp_path / "ray") == read_failures(tmp_path / "local")
    shards = lambda out: [(s["file"], s["rows"], s["failed"]) for s in load_manifest(out)["shards"]]  # noqa: E731
    assert shards(tmp_path / "ray") == shards(tmp_path / "local")


def test_more_workers_than_the_cluster_holds_is_one_error(local_ray, tmp_path):
    x, _ = digits(10)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(OnnxLrpError, match=r"holds 2 worker\(s\) of 1 onnxruntime thread\(s\) \(0.9 CPU each\), "
                                           r"not 3: use --workers 2"):
        run_dataset(CNN, tmp_path / "x.npy", tmp_path / "out", engine="ray", workers=3, progress=False)


def test_an_unreachable_cluster_is_one_error_and_out_stays_untouched(tmp_path):
    import socket
    x, _ = digits(10)
    np.save(tmp_path / "x.npy", x)
    with socket.socket() as probe:   # a port on this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OnnxLrpError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused"):
        run_dataset(CNN, tmp_path / "x.npy", tmp_path / "out", engine="ray", ray_address=f"127.0.0.1:{port}",
                    progress=False)
    assert not (tmp_path / "out").exists()


def test_actor_plan_leaves_cpu_for_ray_and_shares_gpus():
    two_single_cpu = [{"Alive": True, "Resources": {"CPU": 1.0}}] * 2
    plan = actor_plan(two_single_cpu, workers=2, threads=1, gpus_per_worker=None)
    assert (plan.num_cpus, plan.num_gpus, plan.fits) == (0.9, 0.0, 2)
    gpu_node = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}}]
    plan = actor_plan(gpu_node, workers=4, threads=2, gpus_per_worker=None)
    assert (plan.num_cpus, plan.num_gpus, plan.fits) == (1.8, 0.25, 4)
    assert actor_plan(gpu_node, workers=4, threads=2, gpus_per_worker=1).fits == 1
