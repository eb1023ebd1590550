"""The Node.js example (examples/node/explain.js, onnxruntime-node): every output of the compiled model against
Python's onnxruntime, and what it prints against onnxlrp's own Explanation."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxlrp
from onnxlrp.compiler import compiled_metadata

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node"
MODELS = ROOT / "models"
TOLERANCE = 1e-6
CONSERVATION = re.compile(r"total (\S+) = inputs (\S+) \+ biases (\S+) \+ stabilizer (\S+) +\(relative error (\S+)\)")
PREDICTION = re.compile(r"^sample (\d+): predicted (\d+), explained target (\d+) \(output (\S+)\)$")


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with onnxruntime-node installed in examples/node."""
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed (Debian: apt-get install nodejs npm)")
    if not (EXAMPLE / "node_modules" / "onnxruntime-node" / "package.json").is_file():
        pytest.skip(f"onnxruntime-node is not installed in {EXAMPLE}: ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci there")
    return path


def _run_node(node: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(EXAMPLE / "explain.js"), *args], capture_output=True, text=True, timeout=120)


def _python_outputs(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _assert_same_outputs(dumped: dict, reference: dict) -> None:
    """Every output, same shape, within TOLERANCE (relative to the output's largest magnitude, at least 1)."""
    assert sorted(dumped) == sorted(reference)
    for name, want in reference.items():
        got = np.array(dumped[name]["data"], dtype=np.float64).reshape(dumped[name]["dims"])
        assert got.shape == want.shape, name
        scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
        assert np.abs(got - want).max(initial=0.0) <= TOLERANCE * scale, (name, np.abs(got - want).max())


@pytest.mark.parametrize("model_name, samples, composite, targets", [
    ("digits_cnn", "images", "epsilon_plus", []),
    ("digits_mlp", "flat", "epsilon_gamma_box", ["3"]),
])
def test_node_matches_python(node, tmp_path, model_name, samples, composite, targets):
    compiled = onnxlrp.compile(str(MODELS / f"{model_name}.onnx"), composite)
    path = tmp_path / "compiled.onnx"
    onnx.save(compiled, str(path))
    with np.load(MODELS / "digits_samples.npz") as archive:
        x = archive[samples][:5]
    np.save(tmp_path / "x.npy", x.astype(np.float64))  # float64 on disk: converted to the model's float32
    args = [str(path), str(tmp_path / "x.npy"), "--json", str(tmp_path / "out.json")]
    for t in targets:
        args += ["--target", t]
    result = _run_node(node, *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    target = np.full(len(x), int(targets[0]) if targets else -1, dtype=np.int64)
    reference = _python_outputs(compiled, {"input": x.astype(np.float32), "lrp_target": target})
    _assert_same_outputs(json.loads((tmp_path / "out.json").read_text()), reference)

    # what it prints: prediction, explained target and the conservation line per sample, then the bias table
    exp = onnxlrp.Explainer(compiled).explain(x.astype(np.float32), None if not targets else int(targets[0]))
    lines = result.stdout.splitlines()
    found = [(i, m) for i, line in enumerate(lines) if (m := PREDICTION.match(line))]
    assert [int(m.group(1)) for _, m in found] == list(range(len(x)))
    for k, (i, m) in enumerate(found):
        assert int(m.group(2)) == int(exp.output[k].argmax())
        assert int(m.group(3)) == int(exp.target[k])
        total, inputs, biases, stabilizer, error = (float(v) for v in CONSERVATION.search(lines[i + 1]).groups())
        c = exp.conservation()
        assert total == pytest.approx(c["total"][k], rel=1e-5)     # printed with 6 significant digits
        assert inputs == pytest.approx(c["inputs"][k], rel=1e-5, abs=1e-6)
        assert biases == pytest.approx(c["biases"][k], rel=1e-5, abs=1e-6)
        assert error < 1e-5
    table = lines[lines.index(next(line for line in lines if line.startswith("bias table"))) + 3:]
    names = [line.split()[0] for line in table if line and not line.startswith("wrote")]
    assert names == [*sorted(compiled_metadata(compiled)["bias"], key=_graph_order(compiled)), "input",
                     "stabilizer", "total"]
    total_row = next(line for line in table if line.startswith("total")).split()
    assert float(total_row[3]) == pytest.approx(float(exp.total.mean()), rel=1e-3)
    assert total_row[4:] == ["100.0", "%"]


def _graph_order(compiled: onnx.ModelProto):
    """Sort key: a bias node's position in the explained graph."""
    order = {entry[0]: i for i, entry in enumerate(compiled_metadata(compiled)["graph"])}
    return lambda name: order.get(name, len(order))


def _token_model(position_rank: int) -> onnx.ModelProto:
    """A compiled-model-shaped graph with integer inputs, as a transformer export has them: input_ids (N, T) and
    attention_mask (N, T) int64, lrp_target (N,), lrp_position (N,) or a scalar; logits (N, T, K) from an embedding
    and a linear head; the relevance of token t is its embedding's logit of the target at the position (masked), so
    total = inputs exactly. Its `onnxlrp` metadata names the outputs as the compiler does."""
    rng = np.random.default_rng(0)
    vocab, hidden, classes = 11, 4, 3
    init = [helper.make_tensor("E", TensorProto.FLOAT, [vocab, hidden], rng.normal(size=vocab * hidden)),
            helper.make_tensor("W", TensorProto.FLOAT, [hidden, classes], rng.normal(size=hidden * classes)),
            helper.make_tensor("onoff", TensorProto.FLOAT, [2], [0.0, 1.0]),
            helper.make_tensor("K", TensorProto.INT64, [], [classes]),
            helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("flat", TensorProto.INT64, [1], [-1])]
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
        helper.make_node("MatMul", ["emb", "W"], ["logits"]),
        helper.make_node("OneHot", ["lrp_target", "K", "onoff"], ["target_hot"], axis=-1),       # (N, K)
        helper.make_node("Unsqueeze", ["target_hot", "axis1"], ["target_hot3"]),                  # (N, 1, K)
        helper.make_node("Mul", ["logits", "target_hot3"], ["picked"]),
        helper.make_node("ReduceSum", ["picked", "axis2"], ["per_token"], keepdims=0),            # (N, T)
        helper.make_node("Shape", ["input_ids"], ["ids_shape"], start=1, end=2),
        helper.make_node("Squeeze", ["ids_shape"], ["T"]),
        helper.make_node("Reshape", ["lrp_position", "flat"], ["positions"]),                      # (N,) or (1,)
        helper.make_node("OneHot", ["positions", "T", "onoff"], ["position_hot"], axis=-1),       # (N, T) or (1, T)
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["per_token", "position_hot"], ["at_position"]),
        helper.make_node("Mul", ["at_position", "mask"], ["lrp/relevance/input_ids"]),
        helper.make_node("ReduceSum", ["lrp/relevance/input_ids", "axis1"], ["lrp/total"], keepdims=0),
        helper.make_node("Sub", ["lrp/total", "lrp/total"], ["lrp/stabilizer"]),
        helper.make_node("Unsqueeze", ["lrp/stabilizer", "axis1"], ["lrp/bias/embedding"]),
        helper.make_node("Identity", ["logits"], ["lrp/output"]),
    ]
    position_shape = ["N"] if position_rank == 1 else []
    graph = helper.make_graph(nodes, "tokens", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "T"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "T"]),
        helper.make_tensor_value_info("lrp_target", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("lrp_position", TensorProto.INT64, position_shape),
    ], [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name, dims in (
        ("logits", ["N", "T", classes]), ("lrp/relevance/input_ids", ["N", "T"]), ("lrp/bias/embedding", ["N", 1]),
        ("lrp/stabilizer", ["N"]), ("lrp/total", ["N"]), ("lrp/output", ["N", "T", classes]))], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = {"composite": "test", "output": "logits", "target_input": "lrp_target", "logits": "lrp/output",
            "relevance": {"input_ids": "lrp/relevance/input_ids"}, "bias": {"embedding": "lrp/bias/embedding"},
            "stabilizer": "lrp/stabilizer", "total": "lrp/total", "rules": {"embedding": "test"},
            "graph": [["embedding", "Gather", [], []]]}
    helper.set_model_props(model, {"onnxlrp": json.dumps(meta)})
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("position_rank", [1, 0])
def test_node_feeds_integer_inputs_and_position(node, tmp_path, position_rank):
    """Integer inputs from int64 and int32 .npy files, one NAME=FILE per input, and lrp_position (from --position,
    shaped as the model declares it) for sequence outputs: every output against Python onnxruntime."""
    model = _token_model(position_rank)
    onnx.save(model, str(tmp_path / "tokens.onnx"))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 11, size=(2, 5))
    mask = np.ones((2, 5), dtype=np.int64)
    mask[1, 3:] = 0
    np.save(tmp_path / "ids.npy", ids.astype(np.int32))      # int32 on disk: converted to the model's int64
    np.save(tmp_path / "mask.npy", mask)
    result = _run_node(node, str(tmp_path / "tokens.onnx"), f"input_ids={tmp_path / 'ids.npy'}",
                       f"attention_mask={tmp_path / 'mask.npy'}", "--target", "2", "--position", "2",
                       "--json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    position = np.full(2, 2, dtype=np.int64) if position_rank else np.array(2, dtype=np.int64)
    reference = _python_outputs(model, {"input_ids": ids, "attention_mask": mask,
                                        "lrp_target": np.full(2, 2, dtype=np.int64), "lrp_position": position})
    _assert_same_outputs(json.loads((tmp_path / "out.json").read_text()), reference)
    logits = reference["logits"][:, 2, :]
    for n, line in enumerate(l for l in result.stdout.splitlines() if l.startswith("sample")):
        m = PREDICTION.match(line)
        assert (int(m.group(2)), int(m.group(3))) == (int(logits[n].argmax()), 2)
        assert float(m.group(4)) == pytest.approx(float(logits[n, 2]), rel=1e-5)


def test_node_errors_are_one_line(node, tmp_path):
    """Bad inputs: one `error:` line on stderr and exit code 2."""
    compiled = onnxlrp.compile(str(MODELS / "digits_mlp.onnx"))
    onnx.save(compiled, str(tmp_path / "mlp.onnx"))
    np.save(tmp_path / "wrong.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((2, 64), dtype=np.int64))
    np.save(tmp_path / "ok.npy", np.zeros((2, 64), dtype=np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    nan = np.zeros((2, 64))
    nan[1, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "huge.npy", np.full((1, 64), 1e300))
    cases = [
        ([str(MODELS / "digits_mlp.onnx"), str(tmp_path / "ok.npy")], "is not compiled by onnxlrp"),
        ([str(tmp_path / "mlp.onnx"), str(tmp_path / "wrong.npy")],
         "input 'input' has shape (2, 1, 8, 8), expected rank 2"),
        ([str(tmp_path / "mlp.onnx"), str(tmp_path / "ints.npy")], "input 'input' has dtype int64, expected float32"),
        ([str(tmp_path / "mlp.onnx"), str(tmp_path / "junk.npy")], "is not a .npy file"),
        ([str(tmp_path / "mlp.onnx"), str(tmp_path / "nan.npy")],
         "input 'input' contains NaN (the first at flat index 69)"),
        ([str(tmp_path / "mlp.onnx"), str(tmp_path / "huge.npy")], "beyond the range of the model's float32"),
        ([str(tmp_path / "mlp.onnx"), str(tmp_path / "missing.npy")], "cannot read input file"),
        ([str(tmp_path / "mlp.onnx"), str(tmp_path / "ok.npy"), "--target", "10"], "target 10 is out of range"),
        ([str(tmp_path / "mlp.onnx"), f"other={tmp_path / 'ok.npy'}"], "inputs do not match the model"),
        ([str(tmp_path / "nothing.onnx"), str(tmp_path / "ok.npy")], "cannot read model"),
        ([str(tmp_path / "mlp.onnx")], "expected a model and at least one input"),
    ]
    for args, message in cases:
        result = _run_node(node, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, (message, result.stderr)
