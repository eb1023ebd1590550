"""Tiny Hugging Face transformers with perturbed random weights, their ONNX exports (both torch exporters) and
their inputs: the models of the LXT parity tests and of benchmarks/transformers_zoo.py.

Random initialisation leaves biases at 0, norms at (1, 0) and the position / token-type embeddings small, which
hides the relevance that biases, LayerNorm's beta and the embeddings absorb; `perturb` makes all of them non-trivial
(and distinct, so the legacy exporter does not deduplicate them). Used by the tests and by lxt_reference.py (a
separate process: LXT patches transformers' modules in place).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

VOCAB, SEQ, BATCH = 40, 6, 2


@dataclass
class Case:
    """A model to export and explain: how to build it, its inputs, and the targets / positions explained."""

    name: str
    build: Callable
    inputs: dict                       # name -> array (numpy)
    targets: list
    sequence: bool = False             # logits (N, T, V): explain the last position
    family: str = ""                   # the LXT map used by lxt_reference.py
    extra: dict = field(default_factory=dict)


def _config(kind: str):
    """A tiny config of a Hugging Face model family (eager attention: the attention LXT patches)."""
    import transformers as tr
    common = dict(attn_implementation="eager")
    if kind == "bert":
        return tr.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=24, max_position_embeddings=16, num_labels=3, **common)
    if kind == "gpt2":
        return tr.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16, **common)
    if kind == "llama":
        return tr.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                              tie_word_embeddings=False, **common)
    if kind == "vit":
        return tr.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=24, num_labels=3, **common)
    raise KeyError(kind)


def build(kind: str, seed: int = 0):
    """The tiny model of a family in eval mode, weights perturbed (deterministic in the seed)."""
    import torch
    import transformers as tr
    torch.manual_seed(seed)
    cls = {"bert": tr.BertForSequenceClassification, "gpt2": tr.GPT2LMHeadModel, "llama": tr.LlamaForCausalLM,
           "vit": tr.ViTForImageClassification}[kind]
    model = cls(_config(kind)).eval()
    perturb(model, seed)
    return model


def perturb(model, seed: int) -> None:
    """Biases, norm weights / biases and embeddings made non-trivial and distinct; weights scaled up a little."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "norm" in name.lower() or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.2 * noise)
            elif "embed" in name or "wpe" in name or "wte" in name or "cls_token" in name or "position" in name:
                p.copy_(0.5 * noise)
            else:
                p.add_(0.05 * noise)


class Logits:
    """A torch module returning only the logits (export-friendly: no cache, no dict)."""

    def __new__(cls, model, kind: str):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, *args):
                extra = {"use_cache": False} if kind in ("gpt2", "llama") else {}
                return self.m(*args, return_dict=False, **extra)[0]

        return Wrapper().eval()


def inputs_for(kind: str, seed: int = 0) -> dict:
    """A batch of BATCH samples: token ids (with a padded second sample for BERT) or images."""
    g = np.random.default_rng(seed)
    if kind == "vit":
        return {"pixel_values": g.normal(size=(BATCH, 3, 16, 16)).astype(np.float32)}
    ids = g.integers(1, VOCAB, size=(BATCH, SEQ)).astype(np.int64)
    if kind == "bert":
        mask = np.ones((BATCH, SEQ), dtype=np.int64)
        mask[1, -2:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


CASES = {
    "bert": Case("bert", lambda: build("bert"), inputs_for("bert"), [2, 0], family="bert"),
    "gpt2": Case("gpt2", lambda: build("gpt2"), inputs_for("gpt2"), [5, 17], sequence=True, family="gpt2"),
    "llama": Case("llama", lambda: build("llama"), inputs_for("llama"), [3, 11], sequence=True, family="llama"),
    "vit": Case("vit", lambda: build("vit"), inputs_for("vit"), [1, 2], family="vit"),
}


def export(model, kind: str, inputs: dict, path: Path, dynamo: bool) -> Path:
    """Export the logits of a model with the legacy (dynamic batch and sequence axes) or the dynamo exporter."""
    import torch
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    names = list(inputs)
    wrapper = Logits(model, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"], dynamo=True,
                              verbose=False, report=False, verify=False)
        else:
            axes = {n: ({0: "N"} if n == "pixel_values" else {0: "N", 1: "T"}) for n in names}
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"], dynamo=False,
                              opset_version=17, dynamic_axes=axes)
    return path
