"""The real-model test corpus: small networks with random weights, exported to ONNX.

Every family is built here from code or from a transformers config (nothing is downloaded),
given deterministic random weights at realistic scale, and exported to ONNX two ways:

* ``dynamo``: ``torch.onnx.export(..., dynamo=True)`` at opset 18 (torch.export + onnxscript);
* ``torchscript``: the older tracing exporter (``dynamo=False``) at opset 13/14, which spells
  things differently (Shape -> Gather -> Unsqueeze -> Concat reshape targets, Gemm, ...).

The opset-9 "light" models that ship inside the onnx wheel (weights replaced by
ConstantOfShape) are part of the corpus too, as shipped (``light-*``) and with calibrated
random weights in place of the constant ones (``light_random-*``).

Families: ResNet-18 (torchvision layout; small, and real size for the slow tests), transformers
ResNet (basic and bottleneck), VGG, Inception blocks, DenseNet blocks, SqueezeNet fire
modules, ShuffleNet v2 (channel shuffle), MobileNetV2, EfficientNet (B0 structure), ConvNeXt,
ViT, BERT, GPT-2. `cases()` lists every (model, exporter) pair with its slow flag.

Exports go to a cache directory that the caller gives (tests use a session-scoped tmp dir;
set ``SLIMC_MODEL_CACHE`` to keep them between runs). Nothing is ever written into the
repository tree. ``python -m tests.models DIR`` exports the whole corpus into DIR.

Needs the ``models`` extra (torch, transformers, onnxscript); torchvision is not used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# Bump when a model's definition or export settings change, so persistent caches
# (SLIMC_MODEL_CACHE) do not serve stale files.
CORPUS_VERSION = 2

EXPORTERS = ("dynamo", "torchscript")
DYNAMO_OPSET = 18


# ---------------------------------------------------------------------------------------------
# Model specifications
# ---------------------------------------------------------------------------------------------

@dataclass
class Built:
    """A model ready for export: module, example inputs (name -> tensor, in forward order)."""
    module: "object"
    inputs: dict
    output_names: list
    dynamic_axes: Optional[dict] = None  # input name -> {axis: symbol}


@dataclass
class ModelSpec:
    name: str
    build: Callable[[], Built]
    family: str
    make_inputs: Callable[[], dict]  # name -> numpy array, in forward order; deterministic
    slow: bool = False
    exporters: tuple = EXPORTERS
    ts_opset: int = 13
    external_data: bool = False  # dynamo export writes weights to a side file
    dynamic: bool = False  # exported with symbolic batch / sequence dims
    description: str = ""


SPECS: dict[str, ModelSpec] = {}


def _spec(name: str, family: str, image: Optional[tuple] = None,
          inputs: Optional[Callable[[], dict]] = None, **kw):
    """Register a builder. `image`: shape of a single `pixel_values` input; or `inputs`."""
    if image is not None:
        inputs = (lambda: {"pixel_values": image_input(image, name)})
    assert inputs is not None

    def wrap(fn):
        SPECS[name] = ModelSpec(name=name, build=fn, family=family, make_inputs=inputs,
                                description=(fn.__doc__ or "").strip(), **kw)
        return fn
    return wrap


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


# ----- weight initialisation helpers -----------------------------------------------------------

def _init_conv_linear(model) -> None:
    """He init for conv/linear (torchvision-style), so activations keep their scale."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.05)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0 / np.sqrt(m.in_features))
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.05)


def _randomize_norms(model) -> None:
    """Non-trivial affine parameters for every norm layer (defaults are 1 and 0)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(1234)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)) or \
                type(m).__name__.endswith("LayerNorm"):
            w = getattr(m, "weight", None)
            b = getattr(m, "bias", None)
            with torch.no_grad():
                if isinstance(w, torch.Tensor) and w.dim() >= 1:
                    w.copy_(0.75 + 0.5 * torch.rand(w.shape, generator=g))
                if isinstance(b, torch.Tensor) and b.dim() >= 1:
                    b.copy_(0.1 * torch.randn(b.shape, generator=g))


def _calibrate_bn(model, example, batches: int = 2) -> None:
    """Give BatchNorm layers running statistics from real activations (cumulative averages
    over a few random batches) so the eval-mode network is well scaled, as a trained one is."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn((4,) + tuple(example.shape[1:]), generator=g)
            model(x)
    model.eval()
    for m in bns:
        m.momentum = 0.1


def _randomize_layer_scale(model, lo: float = 0.2, hi: float = 0.8) -> None:
    """ConvNeXt-style layer-scale parameters start at 1e-6, which hides the residual branch."""
    import torch

    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name or name.endswith("lambda1") or name.endswith("gamma"):
                if p.dim() == 1:
                    p.copy_(lo + (hi - lo) * torch.rand(p.shape, generator=g))


def _image_model(module, name: str, bn: bool = True) -> Built:
    import torch

    x = torch.from_numpy(SPECS[name].make_inputs()["pixel_values"])
    if bn:
        _randomize_norms(module)
        _calibrate_bn(module, x)
    module.eval()
    return Built(module, {"pixel_values": x}, ["logits"])


def image_input(shape, name: str) -> np.ndarray:
    """Normalised-image-like input: standard normal, deterministic per model."""
    return np.random.default_rng(_seed(name)).standard_normal(shape).astype(np.float32)


def _wrap_hf(model, arg_names: Sequence[str], out_keys: Sequence[str]):
    from torch import nn

    class HFWrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            out = self.m(**dict(zip(arg_names, args)), return_dict=True)
            return tuple(out[k] for k in out_keys)

    return HFWrapper(model).eval()


# ----- plain torch.nn families -----------------------------------------------------------------

def _torch_modules():
    """Module classes, defined lazily so importing this file does not import torch."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    def conv_bn(cin, cout, k, s=1, p=None, groups=1, act=True):
        p = k // 2 if p is None else p
        layers = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        """torchvision's resnet18 layout: 7x7/2 stem, 3x3/2 max pool, 4 stages of 2 basic
        blocks, global average pool, fully connected classifier."""

        def __init__(self, width=64, num_classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            chans = [width, 2 * width, 4 * width, 8 * width]
            layers, cin = [], width
            for i, c in enumerate(chans):
                stride = 1 if i == 0 else 2
                layers.append(nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1)))
                cin = c
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    class VGGish(nn.Module):
        """VGG-11 layout at reduced width: conv3x3+ReLU stacks, 2x2 max pools, flatten, a
        three-layer classifier with dropout."""

        def __init__(self, width=16, num_classes=10, image=32):
            super().__init__()
            cfg = [width, "M", 2 * width, "M", 4 * width, 4 * width, "M", 8 * width, 8 * width,
                   "M"]
            layers, cin = [], 3
            for v in cfg:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                    cin = v
            self.features = nn.Sequential(*layers)
            side = image // 16
            self.classifier = nn.Sequential(
                nn.Linear(cin * side * side, 64), nn.ReLU(True), nn.Dropout(),
                nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, num_classes))

        def forward(self, x):
            x = self.features(x)
            x = x.view(x.size(0), -1)
            return self.classifier(x)

    class InceptionA(nn.Module):
        """Inception-v3 'A' block: 1x1, 1x1->5x5, 1x1->3x3->3x3, avgpool(3,1,1)->1x1 branches
        concatenated along channels."""

        def __init__(self, cin, pool_features):
            super().__init__()
            self.b1 = conv_bn(cin, 16, 1)
            self.b5 = nn.Sequential(conv_bn(cin, 12, 1), conv_bn(12, 16, 5))
            self.b3 = nn.Sequential(conv_bn(cin, 16, 1), conv_bn(16, 24, 3), conv_bn(24, 24, 3))
            self.bp = conv_bn(cin, pool_features, 1)

        def forward(self, x):
            bp = self.bp(F.avg_pool2d(x, 3, 1, 1))
            return torch.cat([self.b1(x), self.b5(x), self.b3(x), bp], 1)

    class InceptionV1Block(nn.Module):
        """GoogLeNet block: branches including a 3x3 max pool -> 1x1 projection."""

        def __init__(self, cin):
            super().__init__()
            self.b1 = nn.Sequential(nn.Conv2d(cin, 16, 1), nn.ReLU(True))
            self.b2 = nn.Sequential(nn.Conv2d(cin, 16, 1), nn.ReLU(True),
                                    nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(True))
            self.b3 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(True),
                                    nn.Conv2d(4, 8, 5, padding=2), nn.ReLU(True))
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                    nn.Conv2d(cin, 8, 1), nn.ReLU(True))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    class InceptionNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 32, 3, 2), nn.MaxPool2d(3, 2, ceil_mode=True))
            self.a = InceptionA(32, 16)   # -> 72 channels
            self.v1 = InceptionV1Block(72)  # -> 56 channels
            self.fc = nn.Linear(56, num_classes)

        def forward(self, x):
            x = self.v1(self.a(self.stem(x)))
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.fc(x)

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth, bn_size=2):
            super().__init__()
            self.norm1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth)
            self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

        def forward(self, feats):
            x = torch.cat(feats, 1)
            x = self.conv1(F.relu(self.norm1(x)))
            return self.conv2(F.relu(self.norm2(x)))

    class DenseBlock(nn.Module):
        def __init__(self, n, cin, growth):
            super().__init__()
            self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

        def forward(self, x):
            feats = [x]
            for layer in self.layers:
                feats.append(layer(feats))
            return torch.cat(feats, 1)

    class DenseNetTiny(nn.Module):
        """DenseNet-121 building blocks: dense blocks (BN-ReLU-1x1-BN-ReLU-3x3, concatenated
        features) and a transition (BN-ReLU-1x1, 2x2 average pool)."""

        def __init__(self, growth=8, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU(True), nn.MaxPool2d(3, 2, 1))
            self.block1 = DenseBlock(3, 16, growth)
            c = 16 + 3 * growth
            self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(True),
                                       nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2))
            self.block2 = DenseBlock(3, c // 2, growth)
            c = c // 2 + 3 * growth
            self.norm = nn.BatchNorm2d(c)
            self.fc = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.block2(self.trans(self.block1(self.stem(x))))
            x = F.relu(self.norm(x))
            x = F.adaptive_avg_pool2d(x, (1, 1))
            return self.fc(torch.flatten(x, 1))

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, e1, e3):
            super().__init__()
            self.squeeze = nn.Conv2d(cin, squeeze, 1)
            self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
            self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

        def forward(self, x):
            x = F.relu(self.squeeze(x))
            return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)

    class SqueezeNet(nn.Module):
        """SqueezeNet 1.1 layout at reduced width: fire modules, ceil-mode max pools, a 1x1
        conv classifier, global average pool."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, 2), nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(32, 8, 16, 16), Fire(32, 8, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(32, 16, 32, 32), Fire(64, 16, 32, 32))
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, num_classes, 1),
                                            nn.ReLU(True), nn.AdaptiveAvgPool2d((1, 1)))

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    def channel_shuffle(x, groups: int):
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            bf = cout // 2
            if stride > 1:
                self.branch1 = nn.Sequential(
                    nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                    nn.BatchNorm2d(cin), nn.Conv2d(cin, bf, 1, bias=False), nn.BatchNorm2d(bf),
                    nn.ReLU(True))
            else:
                self.branch1 = nn.Sequential()
            c2 = cin if stride > 1 else bf
            self.branch2 = nn.Sequential(
                nn.Conv2d(c2, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(True),
                nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
                nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(True))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), 1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), 1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2(nn.Module):
        """ShuffleNet v2 layout at reduced width: channel split (chunk), depthwise convs,
        channel shuffle (reshape / transpose / reshape)."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = conv_bn(3, 16, 3, 2)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.stage2 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
            self.stage3 = nn.Sequential(ShuffleUnit(32, 64, 2), ShuffleUnit(64, 64, 1),
                                        ShuffleUnit(64, 64, 1))
            self.conv5 = conv_bn(64, 128, 1)
            self.fc = nn.Linear(128, num_classes)

        def forward(self, x):
            x = self.stage3(self.stage2(self.maxpool(self.conv1(x))))
            x = self.conv5(x)
            x = x.mean([2, 3])
            return self.fc(x)

    return dict(ResNet18=ResNet18, VGGish=VGGish, InceptionNet=InceptionNet,
                DenseNetTiny=DenseNetTiny, SqueezeNet=SqueezeNet, ShuffleNetV2=ShuffleNetV2)


def _build_torch(cls_name: str, name: str, **kw) -> Built:
    import torch

    torch.manual_seed(_seed(name))
    m = _torch_modules()[cls_name](**kw)
    _init_conv_linear(m)
    return _image_model(m, name)


@_spec("resnet18_small", "resnet", image=(1, 3, 64, 64))
def resnet18_small():
    """ResNet-18 structure (torchvision layout) at width 16 on 1x3x64x64."""
    return _build_torch("ResNet18", "resnet18_small", width=16, num_classes=10)


@_spec("resnet18", "resnet", image=(1, 3, 224, 224), slow=True, external_data=True)
def resnet18():
    """Real-size ResNet-18 (11.7M parameters) on 1x3x224x224; dynamo export keeps the
    weights in an external-data file."""
    return _build_torch("ResNet18", "resnet18", width=64, num_classes=1000)


@_spec("vgg_small", "vgg", image=(2, 3, 32, 32), dynamic=True)
def vgg_small():
    """VGG-11 layout at width 16 on 2x3x32x32, exported with a symbolic batch: the flatten
    `x.view(x.size(0), -1)` becomes Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    b = _build_torch("VGGish", "vgg_small", width=16, image=32)
    b.dynamic_axes = {"pixel_values": {0: "batch"}}
    return b


@_spec("inception_small", "inception", image=(1, 3, 48, 48))
def inception_small():
    """Inception-v3 A block and a GoogLeNet block (max-pool branch, ceil mode) on 1x3x48x48."""
    return _build_torch("InceptionNet", "inception_small")


@_spec("densenet_small", "densenet", image=(1, 3, 64, 64))
def densenet_small():
    """Two DenseNet dense blocks with a transition on 1x3x64x64."""
    return _build_torch("DenseNetTiny", "densenet_small")


@_spec("squeezenet_small", "squeezenet", image=(1, 3, 64, 64))
def squeezenet_small():
    """SqueezeNet 1.1 fire modules on 1x3x64x64."""
    return _build_torch("SqueezeNet", "squeezenet_small")


@_spec("shufflenet_small", "shufflenet", image=(1, 3, 64, 64))
def shufflenet_small():
    """ShuffleNet v2 units (chunk + channel shuffle) on 1x3x64x64."""
    return _build_torch("ShuffleNetV2", "shufflenet_small")


# ----- transformers families (built from configs; no download) --------------------------------

def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _hf_image(model, name: str, out_keys=("last_hidden_state", "pooler_output"),
              bn: bool = True, layer_scale: bool = False) -> Built:
    import torch

    x = torch.from_numpy(SPECS[name].make_inputs()["pixel_values"])
    _randomize_norms(model)
    if layer_scale:
        _randomize_layer_scale(model)
    if bn:
        _calibrate_bn(model, x)
    model.eval()
    return Built(_wrap_hf(model, ["pixel_values"], out_keys), {"pixel_values": x},
                 list(out_keys))


@_spec("hf_resnet_small", "resnet", image=(1, 3, 64, 64))
def hf_resnet_small():
    """transformers ResNetForImageClassification (basic blocks, widths 16..128) on
    1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("hf_resnet_small"))
    cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                          layer_type="basic", num_labels=10)
    m = tf.ResNetForImageClassification(cfg)
    _init_conv_linear(m)
    return _hf_image(m, "hf_resnet_small", out_keys=("logits",))


@_spec("hf_resnet50_small", "resnet", image=(1, 3, 64, 64))
def hf_resnet50_small():
    """transformers ResNetModel with bottleneck blocks (ResNet-50 style, reduced) on
    1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("hf_resnet50_small"))
    cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                          layer_type="bottleneck")
    m = tf.ResNetModel(cfg)
    _init_conv_linear(m)
    return _hf_image(m, "hf_resnet50_small")


@_spec("mobilenetv2_small", "mobilenetv2", image=(1, 3, 64, 64))
def mobilenetv2_small():
    """transformers MobileNetV2 (depth multiplier 0.35, TF 'same' padding via Pad, ReLU6) on
    1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("mobilenetv2_small"))
    cfg = tf.MobileNetV2Config(depth_multiplier=0.35, image_size=64, num_labels=10,
                               classifier_dropout_prob=0.2)
    m = tf.MobileNetV2ForImageClassification(cfg)
    _init_conv_linear(m)
    return _hf_image(m, "mobilenetv2_small", out_keys=("logits",))


@_spec("mobilenetv2", "mobilenetv2", image=(1, 3, 224, 224), slow=True, external_data=True)
def mobilenetv2():
    """Real-size MobileNetV2 1.0 (transformers) on 1x3x224x224."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("mobilenetv2"))
    cfg = tf.MobileNetV2Config(depth_multiplier=1.0, image_size=224, num_labels=1000)
    m = tf.MobileNetV2ForImageClassification(cfg)
    _init_conv_linear(m)
    return _hf_image(m, "mobilenetv2", out_keys=("logits",))


def _efficientnet_config(tf, width, depth, image, hidden):
    return tf.EfficientNetConfig(width_coefficient=width, depth_coefficient=depth,
                                 image_size=image, hidden_dim=hidden, num_labels=10,
                                 dropout_rate=0.2)


@_spec("efficientnet_small", "efficientnet", image=(1, 3, 64, 64))
def efficientnet_small():
    """transformers EfficientNet, B0 structure at width 0.25 / depth 0.5 (MBConv, SiLU,
    squeeze-excitation, 'same' padding) on 1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("efficientnet_small"))
    m = tf.EfficientNetForImageClassification(_efficientnet_config(tf, 0.25, 0.5, 64, 320))
    _init_conv_linear(m)
    return _hf_image(m, "efficientnet_small", out_keys=("logits",))


@_spec("efficientnet_b0", "efficientnet", image=(1, 3, 224, 224), slow=True, external_data=True)
def efficientnet_b0():
    """EfficientNet-B0 (width 1.0, depth 1.0, 224) from transformers."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("efficientnet_b0"))
    cfg = tf.EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=224,
                                hidden_dim=1280, num_labels=1000, dropout_rate=0.2)
    m = tf.EfficientNetForImageClassification(cfg)
    _init_conv_linear(m)
    return _hf_image(m, "efficientnet_b0", out_keys=("logits",))


@_spec("convnext_small", "convnext", image=(1, 3, 64, 64))
def convnext_small():
    """transformers ConvNeXt (patchify stem, 7x7 depthwise, channels-first LayerNorm, GELU,
    layer scale) widths 16..128 on 1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("convnext_small"))
    cfg = tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], image_size=64,
                            layer_norm_eps=1e-6)
    m = tf.ConvNextModel(cfg)
    _init_conv_linear(m)
    return _hf_image(m, "convnext_small", bn=False, layer_scale=True)


@_spec("vit_small", "vit", image=(2, 3, 32, 32))
def vit_small():
    """transformers ViTModel: 2 layers, hidden 64, 4 heads, 8x8 patches on 2x3x32x32."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("vit_small"))
    cfg = tf.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, image_size=32, patch_size=8,
                       attn_implementation="eager")
    m = tf.ViTModel(cfg)
    return _hf_image(m, "vit_small", bn=False)


def token_inputs(name: str, batch: int, seq: int, vocab: int, mask: bool = True,
                 token_types: bool = False) -> dict:
    """input_ids (random tokens), attention_mask (the second sequence padded at the end),
    token_type_ids (two segments)."""
    rng = np.random.default_rng(_seed(name))
    out = {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64)}
    if mask:
        m = np.ones((batch, seq), np.int64)
        if batch > 1:
            m[1, seq - seq // 4:] = 0
        out["attention_mask"] = m
    if token_types:
        t = np.zeros((batch, seq), np.int64)
        t[:, seq // 2:] = 1
        out["token_type_ids"] = t
    return out


def _text_model(model, name, arrays: dict, out_keys) -> Built:
    import torch

    _randomize_norms(model)
    model.eval()
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    dyn = {k: {0: "batch", 1: "sequence"} for k in arrays}
    return Built(_wrap_hf(model, list(arrays), out_keys), tensors, list(out_keys),
                 dynamic_axes=dyn)


@_spec("bert_small", "bert", ts_opset=14, dynamic=True,
       inputs=lambda: token_inputs("bert_small", 2, 16, 1000, mask=True, token_types=True))
def bert_small():
    """transformers BertModel: 2 layers, hidden 64, 4 heads, vocab 1000, SDPA attention (the
    default; GPT-2 below uses the eager path); inputs input_ids, attention_mask (padding),
    token_type_ids, 2x16; exported with symbolic batch/sequence."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("bert_small"))
    cfg = tf.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                        attn_implementation="sdpa")
    m = tf.BertModel(cfg)
    arrays = SPECS["bert_small"].make_inputs()
    return _text_model(m, "bert_small", arrays, ("last_hidden_state", "pooler_output"))


@_spec("gpt2_small", "gpt2", ts_opset=14, dynamic=True,
       inputs=lambda: token_inputs("gpt2_small", 2, 16, 1000, mask=True))
def gpt2_small():
    """transformers GPT2LMHeadModel: 2 layers, n_embd 64, 4 heads, vocab 1000, causal
    attention, tied LM head, no KV cache; input_ids and attention_mask (right padding) 2x16
    with symbolic batch/sequence. (Without an attention_mask, transformers' packed-sequence
    detection uses aten::diff, which the TorchScript exporter cannot export.)"""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(_seed("gpt2_small"))
    cfg = tf.GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                        use_cache=False, attn_implementation="eager")
    m = tf.GPT2LMHeadModel(cfg)
    arrays = SPECS["gpt2_small"].make_inputs()
    return _text_model(m, "gpt2_small", arrays, ("logits",))


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """Exporters print progress and warn a lot; keep test output readable."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export",
                                              "torch._dynamo", "onnxscript", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def model_file(directory: str, name: str, exporter: str) -> str:
    return os.path.join(directory, f"{name}.{exporter}.v{CORPUS_VERSION}.onnx")


def _check_outside_repo(directory: str) -> None:
    repo = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    d = os.path.realpath(directory)
    if os.path.commonpath([repo, d]) == repo:
        raise ValueError(f"model cache {directory!r} is inside the repository; use a directory "
                         f"outside it")


def export(spec: ModelSpec, exporter: str, directory: str, built: Optional[Built] = None) -> str:
    """Export `spec` with `exporter` into `directory` (if not there already); returns the path."""
    import torch

    _check_outside_repo(directory)
    os.makedirs(directory, exist_ok=True)
    path = model_file(directory, spec.name, exporter)
    if os.path.exists(path):
        return path
    built = built or spec.build()
    args = tuple(built.inputs.values())
    names = list(built.inputs)
    tmp = path + ".part"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _quiet(), torch.no_grad():
            if exporter == "dynamo":
                kw = {}
                if built.dynamic_axes:
                    kw["dynamic_shapes"] = _dynamic_shapes(built)
                torch.onnx.export(built.module, args, tmp, dynamo=True,
                                  opset_version=DYNAMO_OPSET, input_names=names,
                                  output_names=built.output_names,
                                  external_data=spec.external_data, verbose=False, **kw)
            elif exporter == "torchscript":
                torch.onnx.export(built.module, args, tmp, dynamo=False,
                                  opset_version=spec.ts_opset, input_names=names,
                                  output_names=built.output_names,
                                  dynamic_axes=built.dynamic_axes, do_constant_folding=True)
            else:
                raise ValueError(f"unknown exporter {exporter!r}")
    finally:
        torch.set_num_threads(threads)
    if spec.external_data and exporter == "dynamo":
        # Re-save under the final name so the external-data location matches it.
        import onnx

        m = onnx.load(tmp)
        data = os.path.basename(path) + ".data"
        onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data, size_threshold=1024)
        os.remove(tmp)
        if os.path.exists(tmp + ".data"):
            os.remove(tmp + ".data")
    else:
        os.replace(tmp, path)
    return path


def _dynamic_shapes(built: Built):
    from torch.export import Dim

    dims: dict[str, object] = {}
    per_arg = []
    for name in built.inputs:
        axes = (built.dynamic_axes or {}).get(name, {})
        spec = {}
        for axis, sym in axes.items():
            if sym not in dims:
                dims[sym] = Dim(sym, min=1, max=64)
            spec[axis] = dims[sym]
        per_arg.append(spec or None)
    import inspect

    params = inspect.signature(built.module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return (tuple(per_arg),)  # forward(self, *args): one entry, the args tuple
    return tuple(per_arg)


# ---------------------------------------------------------------------------------------------
# The onnx wheel's opset-9 "light" models
# ---------------------------------------------------------------------------------------------

LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512")


def light_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def light_model_path(name: str) -> str:
    return os.path.join(light_dir(), f"light_{name}.onnx")


def light_inputs(model) -> dict:
    """The inputs onnx's backend runner feeds these models (arange / n, so its stored
    `light_*_output_0.pb` applies)."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                      for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def randomized_light_model(name: str, directory: str) -> str:
    """The light model with its ConstantOfShape weights (all 0.5, which makes every logit
    equal and the softmax output uniform, hiding most errors) replaced by deterministic random
    initializers of the role's usual scale: He-normal conv / Gemm weights, small biases,
    batch-norm scale ~1, mean ~0, var ~1. Each conv weight is then rescaled (a few passes with
    onnxruntime) to unit gain on the random input, as a trained network's normalisation would
    keep it, so activations neither explode nor vanish over 50+ layers; Gemm layers to output
    rms 2, so the softmax is not saturated. The softmax's
    input (the logits) is added as a graph output. Kept at IR version 3 (weights also listed
    as graph inputs, as the original does). Written to `directory`; returns the path."""
    import onnx
    from onnx import helper, numpy_helper

    _check_outside_repo(directory)
    path = os.path.join(directory, f"light_random_{name}.v{CORPUS_VERSION}.onnx")
    if os.path.exists(path):
        return path
    m = onnx.load(light_model_path(name))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for i, x in enumerate(node.input):
            consumers.setdefault(x, []).append((node, i))

    def role(value: str):
        """(node, input index, attrs) of the first consumer that is not a shape-only op."""
        for _ in range(8):
            uses = consumers.get(value, [])
            if len(uses) != 1:
                return None
            node, i = uses[0]
            if node.op_type in ("Unsqueeze", "Reshape", "Identity") and i == 0:
                value = node.output[0]
                continue
            return node, i, {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return None

    rng = np.random.default_rng(_seed("light_random_" + name))
    new_nodes, weights, dropped_shapes = [], {}, set()
    layer_weights = []  # (conv/gemm node, weight name, bias name or None)
    for node in g.node:
        r = role(node.output[0]) if node.op_type == "ConstantOfShape" else None
        if r is None or node.input[0] not in inits:
            new_nodes.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        user, i, attrs = r
        op, size = user.op_type, int(np.prod(shape))
        if op == "Conv" and i == 1:
            data = rng.standard_normal(shape) * np.sqrt(2.0 / (size // shape[0]))
        elif op == "Gemm" and i == 1:
            fan_in = shape[1] if attrs.get("transB", 0) else shape[0]
            data = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif (op in ("Conv", "Gemm") and i == 2) or op == "Add" or \
                (op == "BatchNormalization" and i in (2, 3)):
            data = 0.1 * rng.standard_normal(shape)
        elif op == "Mul" or (op == "BatchNormalization" and i == 1):
            data = rng.uniform(0.75, 1.25, shape)
        elif op == "BatchNormalization" and i == 4:
            data = rng.uniform(0.5, 1.5, shape)
        else:
            new_nodes.append(node)
            continue
        weights[node.output[0]] = data.astype(np.float32)
        dropped_shapes.add(node.input[0])
    source = {k: k for k in weights}  # value -> the weight it is a reshaped view of
    for node in new_nodes:
        if node.op_type in ("Unsqueeze", "Reshape", "Identity") and node.input[0] in source:
            source[node.output[0]] = source[node.input[0]]
        if node.op_type in ("Conv", "Gemm") and node.input[1] in source:
            bias = source.get(node.input[2]) if len(node.input) > 2 else None
            layer_weights.append((node, source[node.input[1]], bias))
    still_used = {x for node in new_nodes for x in node.input}
    dropped = {n for n in dropped_shapes if n not in still_used}
    keep_inits = [t for t in g.initializer if t.name not in dropped]
    keep_inputs = [vi for vi in g.input if vi.name not in dropped]
    feeds = {k: image_input(v.shape, name) for k, v in light_inputs(m).items()}

    def assemble(extra_outputs=()):
        mm = onnx.ModelProto()
        mm.CopyFrom(m)
        gg = mm.graph
        del gg.node[:]
        gg.node.extend(new_nodes)
        new_inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
        del gg.initializer[:]
        gg.initializer.extend(keep_inits + new_inits)
        del gg.input[:]
        gg.input.extend(keep_inputs + [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                       for t in new_inits])
        if extra_outputs:
            mm.ir_version = max(mm.ir_version, 4)
            for x in extra_outputs:
                gg.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
        return mm

    def rms(a):
        return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))) + 1e-12)

    from tests.oracle import run_onnxruntime

    probes = sorted({x for node, _, _ in layer_weights for x in (node.input[0], node.output[0])})
    for _ in range(4):
        vals = dict(zip(probes, run_onnxruntime(assemble(probes), feeds)[len(g.output):]))
        gains = []
        for node, w, b in layer_weights:
            if node.op_type == "Gemm":  # classifier layers: logits of rms ~2
                gain = rms(vals[node.output[0]]) / 2.0
            else:
                gain = rms(vals[node.output[0]]) / rms(vals[node.input[0]])
            gains.append(gain)
            weights[w] /= np.float32(gain)
            if b is not None:
                weights[b] /= np.float32(gain)
        if max(abs(np.log(gains))) < 0.1:
            break
    m = assemble()
    g = m.graph
    # Expose the logits (the softmax's input) as an output: compared directly, they show
    # errors that the softmax would squash.
    outs = {vi.name for vi in g.output}
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    for node in g.node:
        if node.op_type == "Softmax" and node.input[0] not in outs and node.input[0] in inferred:
            g.output.append(inferred[node.input[0]])
    onnx.checker.check_model(m)
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".part"
    onnx.save(m, tmp)
    os.replace(tmp, path)
    return path


def light_expected(name: str) -> Optional[list]:
    """The stored reference outputs, if the wheel has them."""
    from onnx import TensorProto, numpy_helper

    p = os.path.join(light_dir(), f"light_{name}_output_0.pb")
    if not os.path.exists(p):
        return None
    t = TensorProto()
    with open(p, "rb") as f:
        t.ParseFromString(f.read())
    return [numpy_helper.to_array(t)]


# ---------------------------------------------------------------------------------------------
# The corpus: one object per test session
# ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One ONNX file of the corpus."""
    id: str          # "resnet18_small-dynamo", "light-squeezenet"
    model: str
    exporter: str    # "dynamo" | "torchscript" | "light" | "light_random"
    slow: bool


def cases(include_slow: bool = True) -> list[Case]:
    out = []
    for spec in SPECS.values():
        for ex in spec.exporters:
            out.append(Case(f"{spec.name}-{ex}", spec.name, ex, spec.slow))
    for name in LIGHT_MODELS:
        out.append(Case(f"light-{name}", name, "light", name not in LIGHT_FAST))
    for name in LIGHT_RANDOM:
        out.append(Case(f"light_random-{name}", name, "light_random",
                        name not in LIGHT_RANDOM_FAST))
    return [c for c in out if include_slow or not c.slow]


# Light models that also get a random-weights variant (not the ones whose fully connected
# layers hold hundreds of MB).
LIGHT_RANDOM = ("squeezenet", "shufflenet", "inception_v1", "inception_v2", "resnet50",
                "densenet121")

# The light models in the default (not slow) run; the rest run at 224x224 with full-size
# weights. The random-weights shufflenet stands for the original (same ops, real numerics).
LIGHT_FAST = {"squeezenet"}
LIGHT_RANDOM_FAST = {"squeezenet", "shufflenet"}


class ModelCorpus:
    """Exports lazily into `directory` and remembers each model's example inputs."""

    def __init__(self, directory: str):
        _check_outside_repo(directory)
        self.directory = directory
        self._built: dict[str, Built] = {}

    def _build(self, name: str) -> Built:
        if name not in self._built:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with _quiet():
                    self._built[name] = SPECS[name].build()
            finally:
                torch.set_num_threads(threads)
        return self._built[name]

    def path(self, case: Case) -> str:
        if case.exporter == "light":
            return light_model_path(case.model)
        if case.exporter == "light_random":
            with _file_lock(os.path.join(self.directory, f"light_random_{case.model}.lock")):
                return randomized_light_model(case.model, self.directory)
        spec = SPECS[case.model]
        path = model_file(self.directory, case.model, case.exporter)
        if os.path.exists(path):
            return path
        # Several processes (pytest-xdist workers) may share the directory: one exports, the
        # others wait for it and reuse the file.
        with _file_lock(path + ".lock"):
            if not os.path.exists(path):
                export(spec, case.exporter, self.directory, self._build(case.model))
        if all(os.path.exists(model_file(self.directory, spec.name, ex))
               for ex in spec.exporters):
            self._built.pop(spec.name, None)  # every file is there; free the module
        return path

    def inputs(self, case: Case) -> dict:
        """name -> numpy array, in the model's input order."""
        if case.exporter in ("light", "light_random"):
            import onnx

            feeds = light_inputs(onnx.load(light_model_path(case.model)))
            if case.exporter == "light_random":  # image-like input instead of a ramp
                feeds = {k: image_input(v.shape, case.model) for k, v in feeds.items()}
            return feeds
        return SPECS[case.model].make_inputs()


@contextlib.contextmanager
def _file_lock(path: str):
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def default_cache_dir(fallback: str) -> str:
    """SLIMC_MODEL_CACHE if set (kept between runs), else `fallback` (a tmp dir)."""
    d = os.environ.get("SLIMC_MODEL_CACHE")
    return os.path.abspath(d) if d else fallback


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import time

    ap = argparse.ArgumentParser(description="Export slimc's real-model test corpus.")
    ap.add_argument("directory")
    ap.add_argument("--fast", action="store_true", help="skip the slow (full-size) models")
    ap.add_argument("-k", default="", help="only cases whose id contains this")
    a = ap.parse_args(argv)
    corpus = ModelCorpus(os.path.abspath(a.directory))
    for case in cases(include_slow=not a.fast):
        if a.k not in case.id:
            continue
        t = time.perf_counter()
        try:
            p = corpus.path(case)
            print(f"{case.id:40s} {time.perf_counter() - t:6.1f}s  {p}")
        except Exception as e:  # report and go on
            print(f"{case.id:40s} FAILED: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
