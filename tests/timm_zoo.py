"""The timm zoo of benchmarks/zoo_sweep.py (and its subset in tests/test_zoo_sweep.py): small timm CNN architectures
of every family, built with num_classes=10 and pretrained=False, in two weight states, and their export.

- "untrained": the weights exactly as the constructor makes them (zero biases, BatchNorm at identity statistics,
  zero-initialised last BatchNorm of residual blocks, layer scales of 1e-6). The legacy exporter deduplicates the
  identical initializers into Identity nodes; these are the models a user meets first.
- "trained": the same architecture with "trained-like" weights: every bias, every norm's affine parameters, every
  BatchNorm's running mean and variance and every other 1-D parameter (layer scales, gammas) made non-trivial and
  distinct, with a fixed seed (perturb()).

Inputs are 64x64 (96x96 or 224x224 where the architecture needs more), a batch of two from a fixed seed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import _install_torchvision_stub  # noqa: E402  (timm imports torchvision: the stand-in)

WEIGHTS = ("untrained", "trained")
NUM_CLASSES = 10
BATCH = 2


@dataclass(frozen=True)
class TimmModel:
    """One zoo entry: timm's model name, its family, the input size and extra constructor arguments."""

    name: str
    family: str
    size: int = 64
    kwargs: dict = field(default_factory=dict)
    composite: str = "epsilon_plus"


def _entries(family: str, names: str, **options) -> list:
    """Entries of one family from a space-separated list of timm names."""
    return [TimmModel(name, family, **options) for name in names.split()]


ZOO_LIST: list = [
    *_entries("ResNet/ResNeXt/SE", "resnet10t resnet18 resnet18d resnext26ts seresnext26d_32x4d skresnet18 "
                                    "ecaresnet26t resnest14d gcresnet33ts"),
    *_entries("RegNet", "regnetx_002 regnety_002 regnetz_005"),
    *_entries("EfficientNet/V2", "efficientnet_b0 tf_efficientnet_b0 efficientnet_lite0 tf_efficientnetv2_b0 "
                                  "efficientnetv2_rw_t tinynet_e"),
    *_entries("MobileNetV1-V4", "mobilenetv1_100 mobilenetv2_050 mobilenetv3_small_050 mobilenetv3_large_075 "
                                 "mobilenetv4_conv_small"),
    *_entries("GhostNet", "ghostnet_050 ghostnetv2_100 repghostnet_050"),
    *_entries("MnasNet/NAS", "mnasnet_small semnasnet_075 spnasnet_100 hardcorenas_a"),
    *_entries("DenseNet", "densenet121"),
    *_entries("DLA", "dla34 dla46_c"),
    *_entries("DPN", "dpn48b dpn68"),
    *_entries("Inception", "inception_v3", size=96),
    *_entries("Inception", "inception_next_atto"),
    *_entries("Xception", "legacy_xception xception41p"),
    # the 4096-wide pre-logits ConvMlp cut to 512; 224x224: its 7x7 adaptive pool needs a multiple of 7 (legacy exporter)
    TimmModel("vgg11_bn", "VGG", size=224, kwargs={"mlp_ratio": 0.125}),
    *_entries("ConvNeXt/V2", "convnext_atto convnextv2_atto"),
    *_entries("RepVGG/MobileOne", "repvgg_a0 mobileone_s0"),
    *_entries("ReXNet", "rexnet_100"),
    *_entries("HRNet", "hrnet_w18_small"),
    *_entries("CSP/Darknet", "cspresnet50 cspdarknet53 cs3darknet_s darknet17"),
    *_entries("LCNet", "lcnet_050"),
    *_entries("FBNet", "fbnetc_100 fbnetv3_b"),
    *_entries("MixNet", "mixnet_s tf_mixnet_s"),
    *_entries("Res2Net", "res2net50_14w_8s res2next50"),
    *_entries("SelecSLS", "selecsls42b"),
    *_entries("TResNet", "tresnet_m"),
    *_entries("HGNet", "hgnetv2_b0 hgnet_tiny"),
    *_entries("NF-RegNet/NF-ResNet", "nf_regnet_b0 nf_resnet26"),
    *_entries("ResNetV2/BiT", "resnetv2_18 resnetv2_50 resnetv2_50x1_bit"),
    *_entries("FastViT", "fastvit_t8"),
    *_entries("VoVNet", "ese_vovnet19b_dw"),
    *_entries("GENet", "gernet_s"),
    *_entries("StarNet", "starnet_s1"),
    *_entries("MambaOut", "mambaout_femto"),
    # the transformer and MLP families, explained with AttnLRP (LayerNorm gate, Softmax taylor, uniform products)
    *_entries("ViT/DeiT/CaiT", "vit_tiny_patch16_224 deit_tiny_patch16_224 cait_xxs24_224", composite="attnlrp",
              kwargs={"img_size": 64}),
    TimmModel("swin_tiny_patch4_window7_224", "Swin", composite="attnlrp", kwargs={"img_size": 64, "window_size": 4}),
    *_entries("Hybrid ViT", "levit_128s coat_lite_tiny pit_ti_224 xcit_nano_12_p16_224 twins_svt_small",
              composite="attnlrp", kwargs={"img_size": 64}),
    *_entries("Hybrid ViT", "efficientvit_b0 edgenext_xx_small", composite="attnlrp"),
    TimmModel("mobilevit_xxs", "Hybrid ViT", composite="attnlrp", kwargs={"img_size": 64}),
    *_entries("MLP-Mixer/gMLP/ResMLP", "mixer_s16_224 gmlp_ti16_224 resmlp_12_224", composite="attnlrp",
              kwargs={"img_size": 64}),
    *_entries("MetaFormer", "poolformer_s12", composite="attnlrp"),
]
ZOO: dict = {entry.name: entry for entry in ZOO_LIST}


def perturb(model: "torch.nn.Module", seed: int = 0) -> None:
    """Trained-like weights: biases ~ 0.1 N(0, 1), norm scales 1 + 0.2 N(0, 1), BatchNorm running means 0.1 N(0, 1)
    and variances U(0.5, 1.5), every other 1-D parameter (layer scales, gammas) 0.5 + 0.2 N(0, 1)."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype)

    with torch.no_grad():
        norms = set()
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(0.1 * noise(module.running_mean))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
            if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                norms.update(id(p) for p in (module.weight, module.bias) if p is not None)
                if module.weight is not None:
                    module.weight.copy_(1.0 + 0.2 * noise(module.weight))
                if module.bias is not None:
                    module.bias.copy_(0.1 * noise(module.bias))
        for name, p in model.named_parameters():
            if id(p) in norms:
                continue
            if name.endswith("bias"):
                p.copy_(0.1 * noise(p))
            elif p.dim() <= 1:
                p.copy_(0.5 + 0.2 * noise(p))


def build(name: str, weights: str) -> "torch.nn.Module":
    """The zoo model in eval mode, untrained (as constructed, seed 0) or with perturb()'s trained-like weights."""
    _install_torchvision_stub()
    import timm
    import torch
    entry = ZOO[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **entry.kwargs).eval()
    if weights == "trained":
        perturb(model)
    elif weights != "untrained":
        raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
    return model


def inputs(name: str, seed: int = 7) -> np.ndarray:
    """A batch of BATCH standard normal images of the entry's size."""
    size = ZOO[name].size
    return np.random.default_rng(seed).normal(size=(BATCH, 3, size, size)).astype(np.float32)
