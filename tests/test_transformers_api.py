"""Sequence outputs (lrp_position), token inputs in the CLI (coloured tokens, the token heatmap), and the refusal
of onnxruntime-optimised transformers, on the tiny exports of transformer_models.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxlrp
from onnxlrp.errors import InputError, UnsupportedModelError
from transformer_models import CASES


@pytest.fixture(scope="module")
def gpt2(exports):
    """An Explainer of the legacy GPT-2 export (dynamic batch and sequence axes)."""
    return onnxlrp.Explainer(exports("gpt2", "legacy"), "attnlrp")


def test_position_explains_that_positions_logit(gpt2):
    """A causal LM's logits at position p depend on tokens 0..p only: explaining position p of the full sequence
    equals explaining the last position of the first p + 1 tokens, and later tokens get nothing."""
    ids = CASES["gpt2"].inputs["input_ids"]
    targets = [5, 17]
    full = gpt2.explain({"input_ids": ids}, target=targets, position=[2, -4])  # -4 of 6 positions: 2
    cut = gpt2.explain({"input_ids": ids[:, :3]}, target=targets)
    assert np.allclose(full.total, cut.total, rtol=1e-5)
    assert np.allclose(full.relevance["input_ids"][:, :3], cut.relevance["input_ids"], rtol=1e-4, atol=1e-6)
    assert np.all(full.relevance["input_ids"][:, 3:] == 0)
    assert full.output.shape == (2, 40)  # the explained logits: the row at the position
    last = gpt2.explain({"input_ids": ids}, target=targets)
    assert np.allclose(last.total, last.output[np.arange(2), targets])


def test_bad_positions_are_refused(gpt2):
    """Out-of-range positions and positions on a model without a sequence output are one-line errors."""
    ids = CASES["gpt2"].inputs["input_ids"]
    with pytest.raises(InputError, match=r"position 6 is out of range: output 'logits' has 6 positions"):
        gpt2.explain({"input_ids": ids}, target=1, position=6)
    with pytest.raises(InputError, match=r"got 3 positions for a batch of 2"):
        gpt2.explain({"input_ids": ids}, target=1, position=[0, 1, 2])


def test_position_on_a_classifier_is_refused(exports):
    """BERT's output is (N, classes): no position to choose."""
    bert = onnxlrp.Explainer(exports("bert", "legacy"), "attnlrp")
    with pytest.raises(InputError, match="position applies to sequence outputs"):
        bert.explain(CASES["bert"].inputs, position=0)


def test_cli_colours_tokens_and_draws_them(exports, tmp_path):
    """explain --tokens prints every token with its relevance, --heatmap draws them; the values are the API's, also
    when --batch-size splits the batch and --position gives one position per sample."""
    from PIL import Image
    from onnxlrp.cli import run
    case = CASES["gpt2"]
    np.savez(tmp_path / "ids.npz", **case.inputs)
    words = ["The", "quick", "brown", "fox", "jumps", "over"]
    (tmp_path / "tokens.txt").write_text("\n".join(words) + "\n")
    import contextlib
    import io
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(["explain", str(exports("gpt2", "legacy")), "--input", str(tmp_path / "ids.npz"), "-c", "attnlrp",
                    "-t", "5", "--position", "2", "--position", "4", "--batch-size", "1",
                    "--tokens", str(tmp_path / "tokens.txt"), "--heatmap", str(tmp_path / "tokens.png")])
    assert code == 0
    text = buffer.getvalue()
    assert "in 2 runs of 1" in text  # --batch-size 1: one run per sample, each with its own position
    exp = onnxlrp.Explainer(exports("gpt2", "legacy"), "attnlrp").explain(case.inputs, target=5, position=[2, 4])
    lines = [line for line in text.splitlines() if line.startswith("  input_ids:")]
    assert len(lines) == 2
    for line, row in zip(lines, exp.relevance["input_ids"]):
        for word, value in zip(words, row):
            assert f"{word}[{value:+.3g}]" in line
    image = np.asarray(Image.open(tmp_path / "tokens.png").convert("RGB")).astype(int)
    reds = (image[..., 0] > 200) & (image[..., 2] < 120)
    blues = (image[..., 2] > 150) & (image[..., 0] < 100)
    assert reds.any() or blues.any()


def test_onnxruntime_optimized_transformer_is_refused(exports, tmp_path):
    """onnxruntime's transformer optimizer fuses BERT into com.microsoft ops: one error names every one."""
    from onnxruntime.transformers.optimizer import optimize_model
    optimized = optimize_model(str(exports("bert", "legacy")), model_type="bert", num_heads=2, hidden_size=16,
                               opt_level=1)
    path = tmp_path / "bert_optimized.onnx"
    onnx.save(optimized.model, str(path))
    with pytest.raises(UnsupportedModelError) as info:
        onnxlrp.compile(str(path), "attnlrp")
    message = str(info.value)
    assert message.startswith("this model was optimised by onnxruntime's transformer optimizer; explain the model "
                              "as exported, before onnxruntime's transformer optimizations")
    assert "Attention x2" in message and "SkipLayerNormalization x4" in message
    assert "\n" not in message


def test_profile_balances_at_every_layer(exports):
    """The conservation profile of a legacy GPT-2 (its Conv1D works on (N * T, H) rows, its attention on
    (N, heads, T, d)): at every tensor, relevance + beside + absorbed + stabilizer equals the total per sample."""
    from onnxlrp.tables import profile
    case = CASES["gpt2"]
    exp = onnxlrp.Explainer(exports("gpt2", "legacy"), "attnlrp", node_relevance="sums").explain(
        case.inputs, target=case.targets)
    rows = profile(exp)
    assert len(rows) > 50
    assert max(float(r.relative_error.max()) for r in rows) < 1e-4
    assert {"Softmax", "LayerNormalization", "Gemm"} <= {r.op for r in rows}


def test_compiled_sequence_model_keeps_its_position_input_and_digest(gpt2, exports, tmp_path):
    """A compiled GPT-2 saved to a file: its digest is verified on loading, lrp_position still picks the position
    (the conservation check runs on every explanation), and an edited weight is refused."""
    from onnxlrp.errors import ModelLoadError
    compiled = onnxlrp.compile(str(exports("gpt2", "legacy")), "attnlrp")
    onnx.save(compiled, str(tmp_path / "gpt2_lrp.onnx"))
    ids = CASES["gpt2"].inputs["input_ids"]
    got = onnxlrp.Explainer(tmp_path / "gpt2_lrp.onnx").explain({"input_ids": ids}, target=[5, 17], position=[2, -1])
    want = gpt2.explain({"input_ids": ids}, target=[5, 17], position=[2, -1])
    assert np.allclose(got.relevance["input_ids"], want.relevance["input_ids"], rtol=1e-5, atol=1e-7)
    assert sorted(got.bias) == sorted(want.bias)
    weight = next(t for t in compiled.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.reshape(-1)[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(compiled, str(tmp_path / "edited.onnx"))
    with pytest.raises(ModelLoadError, match="was modified after compilation"):
        onnxlrp.Explainer(tmp_path / "edited.onnx")
