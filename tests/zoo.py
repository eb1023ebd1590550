"""A model zoo for whole-model tests: torchvision-style architectures written out (torchvision is not installed), small.

Every model has random weights from a fixed seed, is in eval mode, and its BatchNorms carry non-trivial statistics
(random affine parameters, running statistics gathered by a few train-mode passes over random data). Widths are
1/8 to 1/16 of the real networks and inputs 16x16 or 32x32: the block structure (strides, downsample branches,
depthwise convolutions, squeeze-excitation, hard-swish, dense concatenation, ConvTranspose, Resize, skip Concat) is
what the tests are about, not the width.

Module attributes are registered in forward order: Zennit's SequentialMergeBatchNorm merges a BatchNorm into the
linear leaf registered right before it, and its first-layer composites take the first Conv leaf in that order.
The ResNet blocks subclass torchvision's BasicBlock / Bottleneck (the stand-ins of tests/conftest.py when torchvision
is missing) and keep torchvision's attribute names, so that zennit.torchvision.ResNetCanonizer recognises them.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import _install_torchvision_stub  # noqa: E402

_install_torchvision_stub()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models import resnet as _tv_resnet  # noqa: E402  (the real module or the stand-in)

NUM_CLASSES = 10


# ----------------------------------------------------------------------------------------------------------- VGG-16


def vgg16_bn(width: int = 16) -> nn.Module:
    """VGG-16 with BatchNorm (torchvision's vgg16_bn layout), channels divided by `width`, 32x32 inputs."""
    layers: list = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v // width, 3, padding=1), nn.BatchNorm2d(v // width), nn.ReLU()]
            c = v // width
    hidden = 4096 // (width * 4)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c, hidden), nn.ReLU(), nn.Dropout(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, NUM_CLASSES))


# ----------------------------------------------------------------------------------------------------------- ResNet


class BasicBlock(_tv_resnet.BasicBlock):
    """torchvision's ResNet BasicBlock: two 3x3 convolutions and a (downsampling) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(_tv_resnet.Bottleneck):
    """torchvision's ResNet Bottleneck (v1.5: the stride sits on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Three convolutions (1x1, 3x3, 1x1) plus the shortcut, then relu."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, adaptive average pool, classifier."""

    def __init__(self, block: type, layers: tuple, width: int) -> None:
        super().__init__()
        self.inplanes = 64 // width
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, 64 // width, layers[0], 1)
        self.layer2 = self._stage(block, 128 // width, layers[1], 2)
        self.layer3 = self._stage(block, 256 // width, layers[2], 2)
        self.layer4 = self._stage(block, 512 // width, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 // width * block.expansion, NUM_CLASSES)

    def _stage(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage: a block with a downsample branch where the shape changes, then blocks - 1 plain ones."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, four stages, global average pool, classifier."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> nn.Module:
    """ResNet-18 (BasicBlock, 2-2-2-2), channels / 8."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width=8)


def resnet50() -> nn.Module:
    """ResNet-50 (Bottleneck, 3-4-6-3), channels / 16."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width=16)


# --------------------------------------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer: BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 on the concatenation of all previous features."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list) -> torch.Tensor:
        """The new features of this layer from the concatenation of every earlier one."""
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    """torchvision's _DenseBlock: every layer reads the concatenation of the block input and all earlier layers."""

    def __init__(self, layers: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(layers):
            self[f"denselayer{i + 1}"] = DenseLayer(cin + i * growth, growth, bn_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenation of the input and every layer's new features."""
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """torchvision's DenseNet layout (stem, dense blocks with transitions, norm5, pool, classifier), small."""

    def __init__(self, growth: int = 4, blocks: tuple = (3, 3, 3), init: int = 8, bn_size: int = 2) -> None:
        super().__init__()
        stem = [("conv0", nn.Conv2d(3, init, 3, 1, 1, bias=False)), ("norm0", nn.BatchNorm2d(init)),
                ("relu0", nn.ReLU()), ("pool0", nn.MaxPool2d(3, 2, 1))]
        self.features = nn.Sequential()
        for name, module in stem:
            self.features.add_module(name, module)
        c = init
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                transition = nn.Sequential()
                transition.add_module("norm", nn.BatchNorm2d(c))
                transition.add_module("relu", nn.ReLU())
                transition.add_module("conv", nn.Conv2d(c, c // 2, 1, bias=False))
                transition.add_module("pool", nn.AvgPool2d(2, 2))
                self.features.add_module(f"transition{i + 1}", transition)
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(c, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features, relu, global average pool, classifier."""
        return self.classifier(torch.flatten(self.pool(self.relu(self.features(x))), 1))


def densenet() -> nn.Module:
    """A DenseNet-style net: three dense blocks of three layers, growth 4."""
    return DenseNet()


def densenet_merges(model: nn.Module) -> list:
    """The (linear, BatchNorm) pairs a DenseNet computes back to back: the stem, and conv1 -> norm2 in every layer.

    Zennit's SequentialMergeBatchNorm must not be used here: in registration order, a block's last conv2 is followed
    by the transition's norm, which normalises the concatenation, not conv2's output."""
    pairs = [(["features.conv0"], "features.norm0")]
    for name, module in model.named_modules():
        if isinstance(module, DenseLayer):
            pairs.append(([f"{name}.conv1"], f"{name}.norm2"))
    return pairs


# ------------------------------------------------------------------------------------------------------ MobileNetV2


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
            act: Optional[Callable[[], nn.Module]] = nn.ReLU6) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation (none if act is None), torchvision's Conv2dNormActivation."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 projection; residual when the shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + block(x) when the shapes match, else block(x)."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 in torchvision's layout, channels / 8 (t, c, n, s per stage as in the paper, n shortened)."""
    layers: list = [conv_bn(3, 4, 3, 2)]
    cin = 4
    for t, c, n, s in ((1, 2, 1, 1), (6, 3, 2, 2), (6, 4, 3, 2), (6, 8, 2, 2), (6, 12, 2, 1), (6, 20, 2, 2),
                       (6, 40, 1, 1)):
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(conv_bn(cin, 160, 1))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(160, NUM_CLASSES))


# ------------------------------------------------------------------------------------------------------ MobileNetV3


class SqueezeExcitation(nn.Module):
    """torchvision's SqueezeExcitation with MobileNetV3's hard-sigmoid gate: x * hsigmoid(fc2(relu(fc1(avg(x)))))."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel gate in [0, 1]."""
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input scaled by its gate (torchvision writes scale * input)."""
        return self._scale(x) * x


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: expand, depthwise, optional squeeze-excitation, linear projection, residual."""

    def __init__(self, cin: int, kernel: int, hidden: int, cout: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        activation = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list = []
        if hidden != cin:
            layers.append(conv_bn(cin, hidden, 1, act=activation))
        layers.append(conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=activation))
        if se:
            layers.append(SqueezeExcitation(hidden, max(hidden // 4, 2)))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """block(x) + x when the shapes match, else block(x) (torchvision's order)."""
        out = self.block(x)
        return out + x if self.use_res_connect else out


def mobilenet_v3() -> nn.Module:
    """MobileNetV3-Small in torchvision's layout (hard-swish, SE with hard-sigmoid gate), channels / 4."""
    config = ((4, 3, 4, 4, True, "RE", 2), (4, 3, 18, 6, False, "RE", 2), (6, 3, 22, 6, False, "RE", 1),
              (6, 5, 24, 10, True, "HS", 2), (10, 5, 60, 10, True, "HS", 1), (10, 5, 30, 12, True, "HS", 1),
              (12, 5, 36, 12, True, "HS", 1), (12, 5, 72, 24, True, "HS", 2), (24, 5, 144, 24, True, "HS", 1))
    layers: list = [conv_bn(3, 4, 3, 2, act=nn.Hardswish)]
    for cin, kernel, hidden, cout, se, act, stride in config:
        layers.append(InvertedResidualV3(cin, kernel, hidden, cout, se, act, stride))
    layers.append(conv_bn(24, 144, 1, act=nn.Hardswish))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(144, 256), nn.Hardswish(),
                         nn.Dropout(0.2), nn.Linear(256, NUM_CLASSES))


# ----------------------------------------------------------------------------------------------------- channels-last


class ChannelsLast(nn.Module):
    """A Keras-style CNN: NHWC input transposed to NCHW inside the graph, and back to NHWC before the flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, act=nn.ReLU), nn.MaxPool2d(2), conv_bn(8, 12, 3, act=nn.ReLU),
                                      nn.MaxPool2d(2), conv_bn(12, 16, 3, 2, act=nn.ReLU))
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(16 * 2 * 2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) -> logits."""
        y = self.features(x.permute(0, 3, 1, 2))
        return self.classifier(self.flatten(y.permute(0, 2, 3, 1)))


# ------------------------------------------------------------------------------------------------------------ U-Net


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """U-Net's (Conv3x3 -> BN -> ReLU) x 2."""
    return nn.Sequential(conv_bn(cin, cout, 3, act=nn.ReLU), conv_bn(cout, cout, 3, act=nn.ReLU))


class UNet(nn.Module):
    """A U-Net: three downsampling levels, brought back up by a ConvTranspose, a nearest nn.Upsample and a bilinear
    F.interpolate (both export to Resize), each followed by a skip Concat with the encoder's features.

    The output is a per-pixel class map (N, classes, H, W); a target is a flat index into it."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc1 = double_conv(3, 4)
        self.pool1 = nn.MaxPool2d(2)
        self.enc2 = double_conv(4, 8)
        self.pool2 = nn.MaxPool2d(2)
        self.enc3 = double_conv(8, 12)
        self.pool3 = nn.MaxPool2d(2)
        self.bottom = double_conv(12, 16)
        self.up3 = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dec3 = double_conv(24, 12)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = double_conv(20, 8)
        self.dec1 = double_conv(12, 4)
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder, bottom, decoder with skips, 1x1 head."""
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        e3 = self.enc3(self.pool2(e2))
        b = self.bottom(self.pool3(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        up = F.interpolate(d2, scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(self.dec1(torch.cat([up, e1], 1)))


# ------------------------------------------------------------------------------------------------------------- zoo


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: the factory, the per-sample input shape, and how Zennit is to be set up for it."""

    name: str
    factory: Callable[[], nn.Module]
    shape: tuple                      # per-sample input shape
    canonizers: Callable = field(default=lambda model: [])  # model -> list of Zennit canonizers
    note: str = ""                    # how Zennit's reference is set up where it needs more than a canonizer
    exact: float = 1e-8               # bound on the float64 relative L2 error against Zennit (see test_models_zoo)
    flat_targets: bool = False        # the output is a map: targets are flat indices into (C, H, W)


def exact_merge(base: type) -> type:
    """Zennit's BatchNorm merge `base` (SequentialMergeBatchNorm, NamedMergeBatchNorm), made exact.

    zennit 0.5.1 leaves the merged BatchNorm with mean 0, var 1, weight 1, bias 0 but its eps, so it still computes
    x / sqrt(1 + eps): about 5e-6 per BatchNorm, which compounds through a deep net and sends the explained logit
    (the seed) away from the model's own output by ~2e-4 relative on VGG-16 (more than the 1e-4 parity bound).
    Zennit's later fix (chr5tphr/zennit#240, for torch >= 2.10, which refuses eps <= 0) sets var = eps = 0.5, which
    makes the BatchNorm the exact identity in float32; this subclass does the same and restores eps on removal."""

    class Exact(base):
        """`base` whose merged BatchNorm computes the exact identity."""

        def register(self, linears: list, batch_norm: nn.Module) -> None:
            """Merge, then turn the BatchNorm into the exact identity."""
            self.batch_norm_eps = batch_norm.eps
            super().register(linears, batch_norm)
            batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 0.5)
            batch_norm.eps = 0.5

        def remove(self) -> None:
            """Undo the merge and restore eps."""
            super().remove()
            self.batch_norm.eps = self.batch_norm_eps

    Exact.__name__ = Exact.__qualname__ = f"Exact{base.__name__}"
    return Exact


def _merge_sequential(model: nn.Module) -> list:
    """Zennit's SequentialMergeBatchNorm (BN merged into the linear leaf registered right before it), exact."""
    from zennit.canonizers import SequentialMergeBatchNorm
    return [exact_merge(SequentialMergeBatchNorm)()]


def _resnet(model: nn.Module) -> list:
    """Zennit's ResNetCanonizer (SequentialMergeBatchNorm for stem, blocks and downsample branches, and a Sum module
    per block for the residual add), with the exact merge."""
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
    return _merge_sequential(model) + [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]


def _densenet(model: nn.Module) -> list:
    """The DenseNet's own merges, by name (see densenet_merges), exact."""
    from zennit.canonizers import NamedMergeBatchNorm
    return [exact_merge(NamedMergeBatchNorm)(densenet_merges(model))]


def _mobilenet_v2(model: nn.Module) -> list:
    """SequentialMergeBatchNorm and, like ResNetCanonizer's blocks, a Sum module for each residual add."""
    return _merge_sequential(model) + [residual_sum_canonizer()]


def residual_sum_canonizer() -> "zennit.canonizers.AttributeCanonizer":
    """An AttributeCanonizer giving every InvertedResidual with a shortcut a Zennit Sum module for its addition,
    exactly as zennit.torchvision.ResNetBasicBlockCanonizer does for BasicBlock (the Norm rule then applies to it)."""
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + block(x) through the Sum module."""
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

    def attributes(name: str, module: nn.Module) -> Optional[dict]:
        """Overloads for blocks with a shortcut."""
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


class _GateAsConstant(torch.autograd.Function):
    """gate * x whose backward hands the incoming relevance to x unchanged and nothing to the gate."""

    @staticmethod
    def forward(ctx: object, gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The product."""
        ctx.gate_shape = gate.shape
        return gate * x

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple:
        """All relevance to the signal, none (zeros: Zennit's hooks on the gate branch need a tensor) to the gate."""
        return grad.new_zeros(ctx.gate_shape), grad


def se_gate_canonizer() -> "zennit.canonizers.AttributeCanonizer":
    """An AttributeCanonizer giving every SqueezeExcitation the gate rule onnxlrp documents (all relevance of
    gate * x to x, the gate a constant weight); stock Zennit passes the gradient through the product instead."""
    from zennit.canonizers import AttributeCanonizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """gate * x with the gate rule."""
        return _GateAsConstant.apply(self._scale(x), x)

    def attributes(name: str, module: nn.Module) -> Optional[dict]:
        """Overload the forward of squeeze-excitation modules."""
        return {"forward": forward.__get__(module)} if isinstance(module, SqueezeExcitation) else None

    return AttributeCanonizer(attributes)


def _mobilenet_v3(model: nn.Module) -> list:
    """SequentialMergeBatchNorm, Sum modules for the residual adds, the documented gate rule for SE products."""
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """block(x) + x through the Sum module."""
        return self.canonizer_sum(torch.stack([self.block(x), x], dim=-1))

    def attributes(name: str, module: nn.Module) -> Optional[dict]:
        """Overloads for blocks with a shortcut."""
        if isinstance(module, InvertedResidualV3) and module.use_res_connect:
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return _merge_sequential(model) + [AttributeCanonizer(attributes), se_gate_canonizer()]


ZOO = {
    "vgg16_bn": ZooModel("vgg16_bn", vgg16_bn, (3, 32, 32), _merge_sequential),
    "resnet18": ZooModel("resnet18", resnet18, (3, 32, 32), _resnet),
    "resnet50": ZooModel("resnet50", resnet50, (3, 32, 32), _resnet),
    "densenet": ZooModel(
        "densenet", densenet, (3, 16, 16), _densenet,
        note="BatchNorms that read a concatenation (norm1, the transitions, norm5) are Pass in both Zennit's "
             "composites and onnxlrp's; conv1 -> norm2 and the stem are merged. A transition's average pool has a "
             "window whose mean is ~1/800 of its entries (a conv's signed output), and the Norm rule "
             "R_i = x_i R / (k mean) amplifies rounding: Zennit in float32 is 1.7e-4 (relative L2) away from Zennit "
             "in float64 here. In float64 the unmerged BNs' epsilon is a float32 ONNX attribute: the graph's logits "
             "differ from PyTorch's by 2e-11, and that window amplifies it to ~1e-9 in the relevance"),
    "mobilenet_v2": ZooModel("mobilenet_v2", mobilenet_v2, (3, 32, 32), _mobilenet_v2),
    "mobilenet_v3": ZooModel(
        "mobilenet_v3", mobilenet_v3, (3, 32, 32), _mobilenet_v3,
        note="stock Zennit has no rule for the squeeze-excitation product gate * x: it passes the gradient, so x "
             "gets R * gate and the gate's branch R * x (not conservative); onnxlrp gives all of R to x and takes "
             "the gate as a constant weight. The reference is Zennit with se_gate_canonizer, which gives the product "
             "that documented rule; hard-swish and hard-sigmoid are Pass in both. In float64 the ONNX graph cannot "
             "equal PyTorch beyond ~3e-8: HardSigmoid's alpha (1/6) is a float32 attribute, and the reference "
             "evaluator's HardSwish uses the same float32 constant",
        exact=1e-6),
    "channels_last": ZooModel("channels_last", ChannelsLast, (16, 16, 3), _merge_sequential),
    "unet": ZooModel("unet", UNet, (3, 16, 16), _merge_sequential, flat_targets=True,
                     note="Zennit has no rule for nn.Upsample / F.interpolate and moves relevance back by their "
                          "gradient, as onnxlrp does for Resize (nearest and linear weights sum to 1: conservative)"),
}


def randomize_batchnorm(model: nn.Module, shape: tuple, seed: int) -> None:
    """Non-trivial BatchNorm state: random affine parameters, then running statistics from a few train-mode passes
    over random data (cumulative average), then eval mode."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand(m.num_features, generator=generator) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.momentum = None  # cumulative moving average over the passes below
        model.train()
        for _ in range(3):
            model(torch.randn((8,) + tuple(shape), generator=generator))
        for m in norms:
            m.momentum = 0.1
    model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """The named zoo model with seeded random weights and BatchNorm statistics, in eval mode."""
    entry = ZOO[name]
    torch.manual_seed(seed)
    model = entry.factory()
    randomize_batchnorm(model, entry.shape, seed + 1)
    return model
