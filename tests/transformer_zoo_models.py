"""The transformer zoo of benchmarks/transformers_zoo.py (and its subset in test_transformers_zoo.py): small
Hugging Face, timm and torch models with perturbed random weights, their inputs, and their export."""
from __future__ import annotations

import warnings
from pathlib import Path
import numpy as np

from transformer_models import BATCH, SEQ, VOCAB, Logits, perturb


def _hf(cls_name: str, config_name: str, **config):
    """A Hugging Face model class built from a tiny config."""
    def build():
        import transformers as tr
        model = getattr(tr, cls_name)(getattr(tr, config_name)(attn_implementation="eager", **config)).eval()
        perturb(model, 0)
        return model
    return build


def _timm(name: str, **kwargs):
    """A timm model (no pretrained weights), small settings."""
    def build():
        import timm
        model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval()
        perturb(model, 0)
        return model
    return build


def _mixer():
    """A small MLP-Mixer (timm's MlpMixer)."""
    from timm.models.mlp_mixer import MlpMixer
    model = MlpMixer(num_classes=3, img_size=32, patch_size=8, num_blocks=2, embed_dim=32).eval()
    perturb(model, 0)
    return model


def _poolformer():
    """poolformer_s12's settings (timm) at depth one per stage and small widths."""
    import torch
    from timm.models.metaformer import GroupNorm1, MetaFormer
    model = MetaFormer(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), downsample_norm=None, mlp_act=torch.nn.GELU,
                       mlp_bias=True, norm_layers=GroupNorm1, layer_scale_init_values=1e-5,
                       res_scale_init_values=None, use_mlp_head=False, num_classes=3).eval()
    perturb(model, 0)
    return model


def _encoder():
    """torch.nn.TransformerEncoder (batch_first, the fast path off) with a classifier on the first position."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True,
                                                     dropout=0.0)
            self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.encoder(x)[:, 0])

    torch.manual_seed(0)
    model = Encoder().eval()
    perturb(model, 0)
    return model


TEXT = dict(vocab_size=VOCAB, max_position_embeddings=24)
ZOO: dict = {
    "hf_bert": ("text", _hf("BertForSequenceClassification", "BertConfig", hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=24, num_labels=3, **TEXT)),
    "hf_distilbert": ("text", _hf("DistilBertForSequenceClassification", "DistilBertConfig", dim=16, n_layers=2,
                                      n_heads=2, hidden_dim=24, num_labels=3, **TEXT)),
    "hf_roberta": ("text", _hf("RobertaForSequenceClassification", "RobertaConfig", hidden_size=16,
                                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, num_labels=3,
                                   vocab_size=VOCAB, max_position_embeddings=24, pad_token_id=1)),
    "hf_gpt2": ("lm", _hf("GPT2LMHeadModel", "GPT2Config", n_embd=16, n_layer=2, n_head=2, n_positions=24,
                          vocab_size=VOCAB)),
    "hf_llama": ("lm", _hf("LlamaForCausalLM", "LlamaConfig", hidden_size=16, intermediate_size=24,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, **TEXT)),
    "hf_qwen2": ("lm", _hf("Qwen2ForCausalLM", "Qwen2Config", hidden_size=16, intermediate_size=24,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, **TEXT)),
    "hf_vit": ("image", _hf("ViTForImageClassification", "ViTConfig", image_size=32, patch_size=8, hidden_size=16,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, num_labels=3)),
    "hf_deit": ("image", _hf("DeiTForImageClassification", "DeiTConfig", image_size=32, patch_size=8,
                             hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                             num_labels=3)),
    "timm_vit_tiny": ("image", _timm("vit_tiny_patch16_224", img_size=32, depth=2)),
    "timm_deit_tiny": ("image", _timm("deit_tiny_patch16_224", img_size=32, depth=2)),
    "timm_swin_tiny": ("image56", _timm("swin_tiny_patch4_window7_224", img_size=56, embed_dim=24,
                                        depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=7)),
    "timm_convnext_atto": ("image", _timm("convnext_atto")),
    "timm_mixer": ("image", _mixer),
    "timm_poolformer": ("image", _poolformer),
    "torch_transformer_encoder": ("sequence", _encoder),
}


def zoo_inputs(kind: str) -> dict:
    """A batch of two for an input kind."""
    g = np.random.default_rng(1)
    if kind.startswith("image"):
        size = 56 if kind == "image56" else 32
        return {"pixel_values": g.normal(size=(BATCH, 3, size, size)).astype(np.float32)}
    if kind == "sequence":
        return {"x": g.normal(size=(BATCH, SEQ, 16)).astype(np.float32)}
    ids = g.integers(2, VOCAB, size=(BATCH, SEQ)).astype(np.int64)
    if kind == "text":
        mask = np.ones((BATCH, SEQ), np.int64)
        mask[1, -1] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


# legacy exports with dynamic axes that cannot be explained, exported with static shapes instead: Swin's window
# padding is computed from the dynamic batch through reshapes (refused, the error names it); the legacy exporter
# bakes nn.MultiheadAttention's sequence length into a Reshape (the model fails at any other length)
LEGACY_STATIC = ("timm_swin_tiny", "torch_transformer_encoder")


def export_zoo(name: str, path: Path, dynamo: bool) -> tuple:
    """Export a zoo model (legacy: dynamic batch and sequence axes but for LEGACY_STATIC); returns (path, inputs)."""
    import torch
    kind, build = ZOO[name]
    model = build()
    inputs = zoo_inputs(kind)
    names = list(inputs)
    hf = name.startswith("hf_")
    wrapper = Logits(model, "gpt2" if kind == "lm" else "bert") if hf else model
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"], dynamo=True,
                              verbose=False, report=False, verify=False)
        else:
            axes = {n: ({0: "N"} if kind.startswith("image") else {0: "N", 1: "T"}) for n in names}
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"], dynamo=False,
                              opset_version=17, dynamic_axes=None if name in LEGACY_STATIC else axes)
    return path, inputs

