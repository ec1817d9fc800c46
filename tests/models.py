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
ViT, BERT, GPT-2. `cases()` lists every (model, exporter) pair with its slow flag. The light
models live in tests/light_models.py, the plain torch.nn families' modules in
tests/torch_families.py, their weights' initialisation in tests/torch_weights.py, seeds and
example inputs in tests/corpus_base.py.

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
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from tests.corpus_base import (CORPUS_VERSION, check_outside_repo, image_input, seed,
                               token_inputs)
from tests.light_models import (LIGHT_FAST, LIGHT_MODELS, LIGHT_RANDOM, LIGHT_RANDOM_FAST,
                                light_inputs, light_model_path, randomized_light_model)
from tests.torch_families import torch_modules
from tests.torch_weights import (calibrate_bn, init_conv_linear, randomize_layer_scale,
                                 randomize_norms)

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


def _image_model(module, name: str, bn: bool = True) -> Built:
    import torch

    x = torch.from_numpy(SPECS[name].make_inputs()["pixel_values"])
    if bn:
        randomize_norms(module)
        calibrate_bn(module, x)
    module.eval()
    return Built(module, {"pixel_values": x}, ["logits"])


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

def _build_torch(cls_name: str, name: str, **kw) -> Built:
    import torch

    torch.manual_seed(seed(name))
    m = torch_modules()[cls_name](**kw)
    init_conv_linear(m)
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
    randomize_norms(model)
    if layer_scale:
        randomize_layer_scale(model)
    if bn:
        calibrate_bn(model, x)
    model.eval()
    return Built(_wrap_hf(model, ["pixel_values"], out_keys), {"pixel_values": x},
                 list(out_keys))


@_spec("hf_resnet_small", "resnet", image=(1, 3, 64, 64))
def hf_resnet_small():
    """transformers ResNetForImageClassification (basic blocks, widths 16..128) on
    1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(seed("hf_resnet_small"))
    cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                          layer_type="basic", num_labels=10)
    m = tf.ResNetForImageClassification(cfg)
    init_conv_linear(m)
    return _hf_image(m, "hf_resnet_small", out_keys=("logits",))


@_spec("hf_resnet50_small", "resnet", image=(1, 3, 64, 64))
def hf_resnet50_small():
    """transformers ResNetModel with bottleneck blocks (ResNet-50 style, reduced) on
    1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(seed("hf_resnet50_small"))
    cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                          layer_type="bottleneck")
    m = tf.ResNetModel(cfg)
    init_conv_linear(m)
    return _hf_image(m, "hf_resnet50_small")


@_spec("mobilenetv2_small", "mobilenetv2", image=(1, 3, 64, 64))
def mobilenetv2_small():
    """transformers MobileNetV2 (depth multiplier 0.35, TF 'same' padding via Pad, ReLU6) on
    1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(seed("mobilenetv2_small"))
    cfg = tf.MobileNetV2Config(depth_multiplier=0.35, image_size=64, num_labels=10,
                               classifier_dropout_prob=0.2)
    m = tf.MobileNetV2ForImageClassification(cfg)
    init_conv_linear(m)
    return _hf_image(m, "mobilenetv2_small", out_keys=("logits",))


@_spec("mobilenetv2", "mobilenetv2", image=(1, 3, 224, 224), slow=True, external_data=True)
def mobilenetv2():
    """Real-size MobileNetV2 1.0 (transformers) on 1x3x224x224."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(seed("mobilenetv2"))
    cfg = tf.MobileNetV2Config(depth_multiplier=1.0, image_size=224, num_labels=1000)
    m = tf.MobileNetV2ForImageClassification(cfg)
    init_conv_linear(m)
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
    torch.manual_seed(seed("efficientnet_small"))
    m = tf.EfficientNetForImageClassification(_efficientnet_config(tf, 0.25, 0.5, 64, 320))
    init_conv_linear(m)
    return _hf_image(m, "efficientnet_small", out_keys=("logits",))


@_spec("efficientnet_b0", "efficientnet", image=(1, 3, 224, 224), slow=True, external_data=True)
def efficientnet_b0():
    """EfficientNet-B0 (width 1.0, depth 1.0, 224) from transformers."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(seed("efficientnet_b0"))
    cfg = tf.EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=224,
                                hidden_dim=1280, num_labels=1000, dropout_rate=0.2)
    m = tf.EfficientNetForImageClassification(cfg)
    init_conv_linear(m)
    return _hf_image(m, "efficientnet_b0", out_keys=("logits",))


@_spec("convnext_small", "convnext", image=(1, 3, 64, 64))
def convnext_small():
    """transformers ConvNeXt (patchify stem, 7x7 depthwise, channels-first LayerNorm, GELU,
    layer scale) widths 16..128 on 1x3x64x64."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(seed("convnext_small"))
    cfg = tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], image_size=64,
                            layer_norm_eps=1e-6)
    m = tf.ConvNextModel(cfg)
    init_conv_linear(m)
    return _hf_image(m, "convnext_small", bn=False, layer_scale=True)


@_spec("vit_small", "vit", image=(2, 3, 32, 32))
def vit_small():
    """transformers ViTModel: 2 layers, hidden 64, 4 heads, 8x8 patches on 2x3x32x32."""
    import torch
    tf = _quiet_transformers()
    torch.manual_seed(seed("vit_small"))
    cfg = tf.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, image_size=32, patch_size=8,
                       attn_implementation="eager")
    m = tf.ViTModel(cfg)
    return _hf_image(m, "vit_small", bn=False)


def _text_model(model, name, arrays: dict, out_keys) -> Built:
    import torch

    randomize_norms(model)
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
    torch.manual_seed(seed("bert_small"))
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
    torch.manual_seed(seed("gpt2_small"))
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


def export(spec: ModelSpec, exporter: str, directory: str, built: Optional[Built] = None) -> str:
    """Export `spec` with `exporter` into `directory` (if not there already); returns the path."""
    import torch

    check_outside_repo(directory)
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


class ModelCorpus:
    """Exports lazily into `directory` and remembers each model's example inputs."""

    def __init__(self, directory: str):
        check_outside_repo(directory)
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
