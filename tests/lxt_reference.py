"""LXT 2.1's AttnLRP relevance of the tiny models in transformer_models.py, computed in a separate process.

    python lxt_reference.py OUT.npz KIND ... [KIND:cp ...]

LXT patches transformers' modules in place (monkey_patch), so this runs apart from the exports. For each KIND it
builds the same perturbed model, patches it with LXT's map (BERT, GPT-2, Llama: lxt.efficient's attnLRP maps;
HF ViT, which LXT has no map for: LXT's own pieces, as its BERT map uses them: patch_attention on modeling_vit,
layer_norm_forward on LayerNorm, non_linear_forward on GELUActivation) and writes, with inputs_embeds / pixels as
the leaf: `KIND/relevance` = input * grad (token models: summed over the hidden axis, (N, T)) and `KIND/logit`.
KIND:cp (after the AttnLRP kinds) swaps in LXT's CP-LRP pieces, as its cp_LRP maps and patch_cp_attention set
them: the attention wrapped by cp_wrap_attention_forward, Llama's MLP by cp_gated_mlp_forward.
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


ORIGINAL_ATTENTION: dict = {}  # module -> its eager_attention_forward before LXT wrapped it


def _module(kind: str):
    """transformers' modeling module of a family."""
    import importlib
    return importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")


def _patch(kind: str, cp: bool) -> None:
    """Apply LXT's AttnLRP patch map of a family, or (cp, after it) LXT's CP-LRP pieces."""
    from conftest import _install_torchvision_stub
    _install_torchvision_stub()
    import torch
    from lxt.efficient import monkey_patch
    from lxt.efficient.patches import (cp_gated_mlp_forward, cp_wrap_attention_forward, layer_norm_forward,
                                       non_linear_forward, patch_attention, patch_method)
    module = _module(kind)
    if cp:  # what lxt's cp_LRP maps change with respect to attnLRP, on the unwrapped attention
        module.eager_attention_forward = cp_wrap_attention_forward(ORIGINAL_ATTENTION[module])
        if kind == "llama":
            module.LlamaMLP.forward = cp_gated_mlp_forward
        return
    ORIGINAL_ATTENTION[module] = getattr(module, "eager_attention_forward", None)
    if kind == "bert":
        monkey_patch(module)
    elif kind == "gpt2":
        import lxt.efficient.models.gpt2 as lxt_gpt2
        monkey_patch(module, lxt_gpt2.attnLRP)
    elif kind == "llama":
        import lxt.efficient.models.llama as lxt_llama
        monkey_patch(module, lxt_llama.attnLRP)
    elif kind == "vit":
        from transformers.activations import GELUActivation
        monkey_patch(module, {
            torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
            GELUActivation: partial(patch_method, non_linear_forward, keep_original=True),
            module: patch_attention,
        })


def relevance(kind: str, cp: bool = False) -> dict:
    """LXT's relevance and explained logits for the model and inputs of transformer_models.CASES[kind]."""
    import torch
    from transformer_models import CASES, build
    _patch(kind, cp)
    case = CASES[kind]
    model = build(kind)
    inputs = {k: torch.from_numpy(v) for k, v in case.inputs.items()}
    targets = torch.tensor(case.targets)
    if kind == "vit":
        leaf = inputs["pixel_values"].clone().requires_grad_()
        logits = model(pixel_values=leaf, return_dict=False)[0]
    else:
        embed = model.get_input_embeddings()
        leaf = embed(inputs["input_ids"]).detach().requires_grad_()
        kwargs = {"attention_mask": inputs["attention_mask"]} if "attention_mask" in inputs else {"use_cache": False}
        logits = model(inputs_embeds=leaf, return_dict=False, **kwargs)[0]
        if case.sequence:
            logits = logits[:, -1]
    chosen = logits.gather(1, targets[:, None])[:, 0]
    chosen.sum().backward()
    rel = (leaf * leaf.grad).detach().numpy().astype(np.float64)
    if kind != "vit":
        rel = rel.sum(axis=-1)
    return {"relevance": rel, "logit": chosen.detach().numpy().astype(np.float64)}


def main(argv: list) -> None:
    """Write the relevance of every KIND[:cp] given to OUT.npz (the ':cp' kinds after the others)."""
    import warnings
    warnings.simplefilter("ignore")
    out, kinds = argv[0], sorted(argv[1:], key=lambda spec: spec.endswith(":cp"))
    arrays = {}
    for spec in kinds:
        kind, _, variant = spec.partition(":")
        for key, value in relevance(kind, variant == "cp").items():
            arrays[f"{spec}/{key}"] = value
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1:])
