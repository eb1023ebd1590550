"""explain-dataset's local engine: rows bit-identical to Explainer.explain on the same batches, resume, failures,
storage modes, readers, and the data-set bias table against a NumPy recomputation from the Parquet rows."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_helpers import CNN, digits, read_rows, relevance_matrix, write_pixels_parquet, write_png_folder
from onnxlrp import Explainer
from onnxlrp.datasets import run_dataset
from onnxlrp.datasets.manifest import load_manifest, read_failures
from onnxlrp.errors import OnnxLrpError


@pytest.fixture(scope="module")
def data():
    return digits(300)


@pytest.fixture(scope="module")
def explainer():
    return Explainer(str(CNN))


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, data):
    """300 digits with labels, explained for their label (batches of 64, shards of 128)."""
    folder = tmp_path_factory.mktemp("labelled")
    x, y = data
    np.savez(folder / "digits.npz", images=x, labels=y)
    run = run_dataset(CNN, folder / "digits.npz", folder / "out", key="images", label_column="labels",
                      target="label", batch_size=64, shard_size=128, progress=False)
    return run, folder / "out"


def test_local_rows_equal_the_explainer_bit_for_bit(labelled_run, data, explainer):
    run, out = labelled_run
    x, y = data
    assert (run.explained, run.failed, run.shards) == (300, 0, 3)
    rows = read_rows(out)
    manifest = load_manifest(out)
    assert [s["file"] for s in manifest["shards"]] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert manifest["complete"] and manifest["settings"]["batch_size"] == 64
    for start in range(0, 300, 64):
        exp = explainer.explain(x[start:start + 64], y[start:start + 64])
        part = rows.slice(start, 64)
        n = part.num_rows
        assert np.array_equal(relevance_matrix(part), exp.relevance["input"].reshape(n, -1))
        for column, info in manifest["columns"]["bias"].items():
            assert np.array_equal(part.column(column).to_numpy(), exp.bias[info["node"]].sum(axis=1, dtype=np.float64))
        assert np.array_equal(part.column("total").to_numpy(), exp.total.astype(np.float64))
        assert np.array_equal(part.column("stabilizer").to_numpy(), exp.stabilizer.astype(np.float64))
        assert np.array_equal(part.column("logit").to_numpy(), exp.output[np.arange(n), exp.target].astype(np.float64))
        assert np.array_equal(part.column("target").to_numpy(), y[start:start + n])
        assert np.array_equal(part.column("label").to_numpy(), y[start:start + n])
        assert np.array_equal(part.column("predicted").to_numpy(), exp.output.argmax(axis=1))
        assert part.column("sample_id").to_pylist() == [str(i) for i in range(start, start + n)]
    c = rows.to_pydict()
    np.testing.assert_allclose(np.add(np.add(c["inputs"], c["biases"]), c["stabilizer"]), c["total"], rtol=1e-5)
    import pandas as pd   # the folder reads as it is, _manifest.json and _failed.jsonl skipped
    frame = pd.read_parquet(out)
    assert len(frame) == 300 and np.array_equal(np.stack(frame.sort_values("index")["relevance/input"]),
                                                relevance_matrix(rows))


def test_workers_share_one_session_and_write_the_same_rows(tmp_path, labelled_run):
    _, out = labelled_run
    x, y = digits(300)
    np.savez(tmp_path / "digits.npz", images=x, labels=y)
    run = run_dataset(CNN, tmp_path / "digits.npz", tmp_path / "out", key="images", label_column="labels",
                      target="label", batch_size=64, shard_size=128, workers=2, progress=False)
    assert run.explained == 300
    assert read_rows(tmp_path / "out").equals(read_rows(out))


def test_resume_skips_finished_shards(tmp_path, data, monkeypatch):
    from onnxlrp.datasets import local_engine
    from onnxlrp.datasets.arrays import ArraySource
    x, _ = data
    np.save(tmp_path / "x.npy", x[:200])
    options = dict(batch_size=32, shard_size=64, progress=False)
    run_dataset(CNN, tmp_path / "x.npy", tmp_path / "full", **options)
    reader = ArraySource.batches

    def interrupted(self, start, stop, size):   # Ctrl-C while the third shard (samples 128..191) is read
        for raw in reader(self, start, stop, size):
            if raw.index[0] >= 160:
                raise KeyboardInterrupt
            yield raw
    monkeypatch.setattr(ArraySource, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(CNN, tmp_path / "x.npy", tmp_path / "out", **options)
    monkeypatch.setattr(ArraySource, "batches", reader)
    out = tmp_path / "out"
    assert [s["shard"] for s in load_manifest(out)["shards"]] == [0, 1]
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "part-00000.parquet", "part-00001.parquet"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-*.parquet")}

    explained_shards = []
    explain = local_engine.explain_batch
    monkeypatch.setattr(local_engine, "explain_batch",
                        lambda e, layout, batch, target: explained_shards.append(batch.shard) or explain(
                            e, layout, batch, target))
    run = run_dataset(CNN, tmp_path / "x.npy", out, resume=True, **options)
    assert run.skipped_shards == 2 and run.explained == 200 - 128
    assert sorted(set(explained_shards)) == [2, 3]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-0000[01].parquet")} == before
    assert read_rows(out).equals(read_rows(tmp_path / "full"))
    again = run_dataset(CNN, tmp_path / "x.npy", out, resume=True, **options)
    assert (again.explained, again.skipped_shards) == (0, 4)
    with pytest.raises(OnnxLrpError, match=r"a setting differs: composite: \"epsilon_plus\""):
        run_dataset(CNN, tmp_path / "x.npy", out, resume=True, composite="epsilon", **options)
    with pytest.raises(OnnxLrpError, match="pass --resume to continue it"):
        run_dataset(CNN, tmp_path / "x.npy", out, **options)


def test_corrupt_image_is_listed_and_the_job_goes_on(tmp_path, data, explainer):
    x, y = data
    pixels = write_png_folder(tmp_path / "images", x[:40], y[:40])
    (tmp_path / "images" / "3" / "broken.png").write_bytes(b"this is not a PNG")
    run = run_dataset(CNN, tmp_path / "images", tmp_path / "out", batch_size=16, target="label", progress=False)
    assert (run.explained, run.failed) == (40, 1)
    failures = read_failures(tmp_path / "out")
    assert [f["sample_id"] for f in failures] == ["3/broken.png"]
    assert "cannot read image" in failures[0]["reason"]
    rows = read_rows(tmp_path / "out")
    manifest = load_manifest(tmp_path / "out")
    assert manifest["classes"] == [str(c) for c in sorted(set(y[:40].tolist()))]
    ids = rows.column("sample_id").to_pylist()
    for row, sample_id in enumerate(ids):
        i = int(sample_id.split("/")[1][:3])
        assert int(sample_id.split("/")[0]) == y[i]
        assert manifest["classes"][rows.column("label")[row].as_py()] == str(y[i])
        image = (pixels[i].astype(np.float32) / 255.0)[None, None]
        exp = explainer.explain(image, int(y[i]))
        np.testing.assert_allclose(relevance_matrix(rows.slice(row, 1))[0], exp.relevance["input"].reshape(-1),
                                   rtol=1e-5, atol=1e-7)


def test_wrong_shape_and_nan_samples_are_listed_and_the_job_goes_on(tmp_path, data, explainer):
    x, y = data
    x, y = x[:100], y[:100]
    nan = x[17].reshape(-1).copy()
    nan[5] = np.nan
    write_pixels_parquet(tmp_path / "d.parquet", x, y, {9: x[9].reshape(-1)[:63], 17: nan})
    run = run_dataset(CNN, tmp_path / "d.parquet", tmp_path / "out", column="pixels", label_column="label",
                      target="label", batch_size=16, shard_size=32, progress=False)
    assert (run.explained, run.failed) == (98, 2)
    failures = read_failures(tmp_path / "out")
    assert [(f["index"], f["sample_id"], f["shard"]) for f in failures] == [(9, "d.parquet#9", 0),
                                                                            (17, "d.parquet#17", 0)]
    assert failures[0]["reason"].startswith("wrong shape: 63 values, the model's input 'input' needs 64")
    assert failures[1]["reason"] == "holds NaN or Inf"
    rows = read_rows(tmp_path / "out")
    done = rows.column("index").to_numpy()
    assert np.array_equal(done, np.setdiff1d(np.arange(100), [9, 17]))
    for start in range(0, 100, 16):   # the engine's batches, without the failed samples
        good = np.setdiff1d(np.arange(start, min(start + 16, 100)), [9, 17])
        exp = explainer.explain(x[good], y[good])
        assert np.array_equal(relevance_matrix(rows.filter(np.isin(done, good))),
                              exp.relevance["input"].reshape(len(good), -1))
    assert [s["failed"] for s in load_manifest(tmp_path / "out")["shards"]] == [2, 0, 0, 0]


def test_parquet_image_bytes_and_storage_modes(tmp_path, data, explainer):
    import io
    from PIL import Image
    x, y = data
    encoded = []
    for image in x[:20]:
        buffer = io.BytesIO()
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    encoded[4] = None
    pq.write_table(pa.table({"image": encoded}), str(tmp_path / "images.parquet"))
    base = dict(batch_size=8, progress=False, target=2)
    full = run_dataset(CNN, tmp_path / "images.parquet", tmp_path / "full", **base)
    assert (full.explained, full.failed) == (19, 1)
    assert read_failures(tmp_path / "full")[0]["reason"] == "no image (null)"
    rows = read_rows(tmp_path / "full")
    pixels = np.round(x[:20] * 255).astype(np.uint8).astype(np.float32) / 255.0
    good = [i for i in range(20) if i != 4]
    exp = explainer.explain(pixels[good], 2)
    np.testing.assert_allclose(relevance_matrix(rows), exp.relevance["input"].reshape(19, -1), rtol=1e-5, atol=1e-7)
    for store in ("float16", "sum"):
        run_dataset(CNN, tmp_path / "images.parquet", tmp_path / store, store=store, **base)
    half = read_rows(tmp_path / "float16")
    assert half.schema.field("relevance/input").type == pa.list_(pa.float16(), 64)
    assert np.array_equal(relevance_matrix(half), relevance_matrix(rows).astype(np.float16))
    sums = read_rows(tmp_path / "sum")
    assert sums.schema.field("relevance/input").type == pa.float64()
    assert np.array_equal(sums.column("relevance/input").to_numpy(),
                          relevance_matrix(rows).sum(axis=1, dtype=np.float64))
    assert sums.drop_columns(["relevance/input"]).equals(rows.drop_columns(["relevance/input"]))


def test_dataset_report_equals_a_numpy_recomputation(labelled_run, data):
    from onnxlrp.datasets.report import dataset_report
    _, out = labelled_run
    rows = read_rows(out).to_pydict()
    manifest = load_manifest(out)
    bias_columns = list(manifest["columns"]["bias"])
    columns = bias_columns + ["biases", "inputs", "stabilizer"]
    values = np.column_stack([np.asarray(rows[c]) for c in columns])
    total = np.asarray(rows["total"])
    for by in ("label", "predicted"):
        report = dataset_report(out, by)
        keys = np.asarray(rows[by])
        expected = [("all", np.ones(len(total), bool))] + [(k, keys == k) for k in np.unique(keys)]
        assert [g.samples for g in report.groups] == [int(m.sum()) for _, m in expected]
        for group, (_, mask) in zip(report.groups, expected):
            np.testing.assert_allclose(group.mean, values[mask].mean(axis=0), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(group.share, (values[mask] / total[mask, None]).mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(group.logit, total[mask].mean(), rtol=1e-12)
            # the bias nodes, the inputs and the stabilizer share the whole logit
            np.testing.assert_allclose(group.share[:len(bias_columns)].sum() + group.share[-2:].sum(), 1.0, rtol=1e-5)
    assert report.terms[0].name == manifest["columns"]["bias"][bias_columns[0]]["node"]


def test_bad_requests_are_one_line_errors(tmp_path, data):
    x, _ = data
    np.save(tmp_path / "x.npy", x[:10])
    np.save(tmp_path / "flat.npy", x[:10].reshape(10, 64))
    with pytest.raises(OnnxLrpError, match="--target label needs labels"):
        run_dataset(CNN, tmp_path / "x.npy", tmp_path / "a", target="label", progress=False)
    with pytest.raises(OnnxLrpError, match=r"samples of shape \(64,\), the model's input 'input' needs \(1, 8, 8\)"):
        run_dataset(CNN, tmp_path / "flat.npy", tmp_path / "b", progress=False)
    with pytest.raises(OnnxLrpError, match="data not found"):
        run_dataset(CNN, tmp_path / "missing.npz", tmp_path / "c", progress=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(OnnxLrpError, match="exists and is not empty"):
        run_dataset(CNN, tmp_path / "x.npy", tmp_path / "d", progress=False)
    np.save(tmp_path / "nan.npy", np.full((70, 1, 8, 8), np.nan, np.float32))
    with pytest.raises(OnnxLrpError, match="the first 64 samples all failed.*'0': holds NaN or Inf"):
        run_dataset(CNN, tmp_path / "nan.npy", tmp_path / "e", progress=False)


def test_explainer_threads_sets_onnxruntime_intra_op_threads(data, explainer):
    import onnxruntime as ort
    x, _ = data
    one = Explainer(str(CNN), threads=1)
    assert one.session.get_session_options().intra_op_num_threads == 1
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    two = Explainer(str(CNN), session_options=options, threads=2)
    assert (two.session.get_session_options().intra_op_num_threads,
            two.session.get_session_options().inter_op_num_threads) == (2, 1)
    np.testing.assert_allclose(one.explain(x[:32]).relevance["input"], explainer.explain(x[:32]).relevance["input"],
                               rtol=1e-6, atol=1e-8)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(OnnxLrpError, match="threads must be a positive integer"):
            Explainer(str(CNN), threads=bad)
