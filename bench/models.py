"""The benchmark's models: each one an ONNX file per batch size, plus its inputs.

Real networks are built with torch / transformers (random weights, nothing downloaded) by the
builders in tests/models.py, or from transformers configs here, and exported with torch's
dynamo exporter at a static batch. The MLP, the single-op micro benchmarks and the denormal
network are written with onnx.helper and need neither. Exports are cached in
``$SLIMC_BENCH_CACHE`` (default ``~/.cache/slimc-bench``), keyed by name, batch and VERSION.

Groups: "model" (the families averaged in the geometric mean), "mlp", "micro", "special"
(the denormal pair) and "user" (files given on the command line).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

VERSION = 1  # bump when a definition below changes, so cached exports are rebuilt


@dataclass
class Bench:
    name: str
    group: str
    make: Callable[[int, str], tuple]  # (batch, cache dir) -> (onnx path, feeds)
    description: str
    batches: Optional[list] = None  # fixed batch sizes (a user model with a static batch)


def cache_dir() -> str:
    d = os.environ.get("SLIMC_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "slimc-bench")
    os.makedirs(d, exist_ok=True)
    return d


def _rng(name: str):
    import zlib

    return np.random.default_rng(zlib.crc32(name.encode()))


# ---------------------------------------------------------------------------------------------
# torch / transformers models
# ---------------------------------------------------------------------------------------------

def _export(name: str, batch: int, directory: str, build, inputs: Callable[[int], dict],
            external_data: bool = False) -> tuple:
    """Export build() (a tests.models.Built) with `inputs(batch)` at a static shape; cached."""
    from tests import models as tm

    spec = tm.ModelSpec(name=f"bench_{name}_b{batch}_v{VERSION}", build=build, family=name,
                        make_inputs=lambda: inputs(batch), exporters=("dynamo",),
                        external_data=external_data)
    feeds = inputs(batch)
    path = tm.model_file(directory, spec.name, "dynamo")
    if not os.path.exists(path):
        import torch

        with tm._quiet():
            built = build()
        built = dataclasses.replace(built, dynamic_axes=None,
                                    inputs={k: torch.from_numpy(v) for k, v in feeds.items()})
        tm.export(spec, "dynamo", directory, built)
    return path, feeds


def _corpus_image(name: str) -> Callable:
    """A full-size image model of tests/models.py (its 1x3x224x224 spec), at any batch."""
    def make(batch, directory):
        from tests import models as tm

        spec = tm.SPECS[name]
        shape = spec.make_inputs()["pixel_values"].shape
        inputs = lambda b: {"pixel_values": tm.image_input((b,) + shape[1:], name)}
        return _export(name, batch, directory, spec.build, inputs, spec.external_data)
    return make


def _vit():
    """ViT-Ti/16 (transformers ViTForImageClassification): 12 layers, hidden 192, 3 heads."""
    import torch
    from tests import models as tm
    from tests.torch_weights import randomize_norms

    tf = tm._quiet_transformers()
    torch.manual_seed(1)
    cfg = tf.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                       intermediate_size=768, image_size=224, patch_size=16, num_labels=1000,
                       attn_implementation="eager")
    m = tf.ViTForImageClassification(cfg)
    randomize_norms(m)
    x = torch.from_numpy(tm.image_input((1, 3, 224, 224), "vit"))
    return tm.Built(tm._wrap_hf(m.eval(), ["pixel_values"], ["logits"]), {"pixel_values": x},
                    ["logits"])


def _make_vit(batch, directory):
    from tests import models as tm

    inputs = lambda b: {"pixel_values": tm.image_input((b, 3, 224, 224), "vit")}
    return _export("vit", batch, directory, _vit, inputs)


BERT_SEQ, GPT2_SEQ = 128, 64


def _bert_inputs(batch):
    from tests import models as tm

    return tm.token_inputs("bert", batch, BERT_SEQ, 30522, mask=True, token_types=True)


def _bert():
    """BERT-mini-sized encoder: 4 layers, hidden 256, 4 heads, FFN 1024, vocab 30522."""
    import torch
    from tests import models as tm

    tf = tm._quiet_transformers()
    torch.manual_seed(2)
    cfg = tf.BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024,
                        max_position_embeddings=512)
    return tm._text_model(tf.BertModel(cfg), "bert", _bert_inputs(1),
                          ("last_hidden_state", "pooler_output"))


def _gpt2_inputs(batch):
    from tests import models as tm

    return tm.token_inputs("gpt2", batch, GPT2_SEQ, 8192, mask=True)


def _gpt2():
    """GPT-2-style decoder with LM head: 2 layers, hidden 256, 4 heads, vocab 8192, causal
    attention over the whole sequence (no KV cache)."""
    import torch
    from tests import models as tm

    tf = tm._quiet_transformers()
    torch.manual_seed(3)
    cfg = tf.GPT2Config(vocab_size=8192, n_positions=256, n_embd=256, n_layer=2, n_head=4,
                        use_cache=False, attn_implementation="eager")
    return tm._text_model(tf.GPT2LMHeadModel(cfg), "gpt2", _gpt2_inputs(1), ("logits",))


# ---------------------------------------------------------------------------------------------
# onnx.helper models
# ---------------------------------------------------------------------------------------------

def _save_graph(name: str, batch: int, directory: str, nodes, inputs, outputs, weights: dict,
                feeds: dict) -> tuple:
    import onnx
    from onnx import helper, numpy_helper

    path = os.path.join(directory, f"bench_{name}_b{batch}_v{VERSION}.onnx")
    if not os.path.exists(path):
        inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
        graph = helper.make_graph(nodes, name, inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, path + ".part")
        os.replace(path + ".part", path)
    return path, feeds


def _value(name, shape):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _make_mlp(batch, directory):
    """784 -> 1024 -> 1024 -> 10, Gemm + ReLU."""
    from onnx import helper

    rng, sizes = _rng("mlp"), [784, 1024, 1024, 10]
    nodes, weights, x = [], {}, "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        weights[f"w{i}"] = (rng.standard_normal((b, a)) * np.sqrt(2 / a)).astype(np.float32)
        weights[f"b{i}"] = (0.05 * rng.standard_normal(b)).astype(np.float32)
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], ["y" if last else f"fc{i}"],
                                      transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"fc{i}"], [f"relu{i}"]))
            x = f"relu{i}"
    feeds = {"x": rng.standard_normal((batch, 784)).astype(np.float32)}
    return _save_graph("mlp", batch, directory, nodes, [_value("x", [batch, 784])],
                       [_value("y", [batch, 10])], weights, feeds)


def _make_matmul(m, k, n, per_batch: bool):
    """A single MatMul: x [batch, m, k] (or [batch * m, k]) times a constant [k, n]."""
    def make(batch, directory):
        from onnx import helper

        name = f"matmul_{m}x{k}x{n}"
        rng = _rng(name)
        shape = [batch, m, k] if per_batch else [batch * m, k]
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        return _save_graph(name, batch, directory, [helper.make_node("MatMul", ["x", "w"], ["y"])],
                           [_value("x", shape)], [_value("y", shape[:-1] + [n])], {"w": w}, feeds)
    return make


def _conv_layers(name, batch, directory, c, hw, depth, k=3, group=1, input_scales=(),
                 bias_std=0.05, relu=True):
    """The input multiplied by each of `input_scales` in turn, then `depth` convolutions
    c -> c (k x k, pad k//2, `group` groups), each followed by a ReLU if `relu`;
    He-initialised so activations keep their scale."""
    from onnx import helper

    rng = _rng(name)
    nodes, weights, x = [], {}, "x"
    for i, scale in enumerate(input_scales):
        weights[f"scale{i}"] = np.array(scale, np.float32)
        nodes.append(helper.make_node("Mul", [x, f"scale{i}"], [f"scaled{i}"]))
        x = f"scaled{i}"
    fan_in = c // group * k * k
    for i in range(depth):
        last = i == depth - 1
        w = rng.standard_normal((c, c // group, k, k)) * np.sqrt(2 / fan_in)
        weights[f"w{i}"] = w.astype(np.float32)
        weights[f"b{i}"] = (bias_std * rng.standard_normal(c)).astype(np.float32)
        conv = "y" if last and not relu else f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [conv], pads=[k // 2] * 4,
                                      group=group, kernel_shape=[k, k]))
        x = conv
        if relu:
            x = "y" if last else f"relu{i}"
            nodes.append(helper.make_node("Relu", [conv], [x]))
    shape = [batch, c, hw, hw]
    feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
    return _save_graph(name, batch, directory, nodes, [_value("x", shape)], [_value("y", shape)],
                       weights, feeds)


def _make_conv(c, hw, k, depthwise=False):
    def make(batch, directory):
        name = f"{'dw' if depthwise else ''}conv{k}x{k}_{c}x{hw}x{hw}"
        return _conv_layers(name, batch, directory, c, hw, depth=1, k=k,
                            group=c if depthwise else 1, relu=False)
    return make


def _make_denormal(scales):
    """The input scaled by two constants, then six 3x3 convs (32 channels, 56x56, ReLU, no
    bias). Scales (1e-20, 1e-20) put every activation in the denormal range (below 1.2e-38),
    where the convolutions keep it; (1e-20, 1e20) is the same network with normal values."""
    def make(batch, directory):
        name = "denormal_cnn" if scales[1] < 1 else "normal_cnn"
        return _conv_layers(name, batch, directory, 32, 56, depth=6, input_scales=scales,
                            bias_std=0.0)
    return make


BENCHES = [
    Bench("resnet18", "model", _corpus_image("resnet18"),
          "ResNet-18 (torchvision layout), 3x224x224"),
    Bench("mobilenetv2", "model", _corpus_image("mobilenetv2"),
          "MobileNetV2 1.0 (transformers), 3x224x224"),
    Bench("efficientnet_b0", "model", _corpus_image("efficientnet_b0"),
          "EfficientNet-B0 (transformers), 3x224x224"),
    Bench("vit", "model", _make_vit, "ViT-Ti/16 (transformers), 12 layers, hidden 192, 3x224x224"),
    Bench("bert", "model", lambda b, d: _export("bert", b, d, _bert, _bert_inputs),
          f"BERT encoder (transformers), 4 layers, hidden 256, seq {BERT_SEQ}"),
    Bench("gpt2", "model", lambda b, d: _export("gpt2", b, d, _gpt2, _gpt2_inputs),
          f"GPT-2 decoder + LM head (transformers), 2 layers, hidden 256, {GPT2_SEQ} tokens"),
    Bench("mlp", "mlp", _make_mlp, "MLP 784-1024-1024-10, Gemm + ReLU"),
    Bench("matmul_bert_ffn", "micro", _make_matmul(128, 768, 3072, per_batch=True),
          "MatMul [batch,128,768] x [768,3072]"),
    Bench("matmul_gemv", "micro", _make_matmul(1, 1024, 1024, per_batch=False),
          "MatMul [batch,1024] x [1024,1024]"),
    Bench("conv3x3", "micro", _make_conv(64, 56, 3), "Conv 3x3 64->64 on 56x56, pad 1"),
    Bench("dwconv3x3", "micro", _make_conv(144, 56, 3, depthwise=True),
          "depthwise Conv 3x3, 144 channels, 56x56, pad 1"),
    Bench("denormal_cnn", "special", _make_denormal((1e-20, 1e-20)),
          "6 x (Conv 3x3 32->32 + ReLU) on 56x56, activations denormal"),
    Bench("normal_cnn", "special", _make_denormal((1e-20, 1e20)),
          "the same network with normal activations (reference for denormal_cnn)"),
]


def select(names: Optional[str]) -> list:
    """Benches by comma-separated names or group names (all if None)."""
    if not names:
        return list(BENCHES)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {b.name for b in BENCHES} | {b.group for b in BENCHES}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(sorted(known))}")
    return [b for b in BENCHES if b.name in wanted or b.group in wanted]


# ---------------------------------------------------------------------------------------------
# A user's own ONNX files
# ---------------------------------------------------------------------------------------------

def user_bench(path: str, dims: dict) -> Bench:
    """Bench a user's model: float inputs standard normal, integer inputs 1 where the name
    says mask, else random 0/1 (valid token ids for any vocabulary); a symbolic first axis is
    the batch, other symbolic axes come from `dims` (--dim NAME=N)."""
    import onnx
    from onnx import helper

    name = os.path.splitext(os.path.basename(path))[0]
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # reported as the model's error row
        def fail(batch, directory, e=e):
            raise e
        return Bench(name, "user", fail, path)
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in t.shape.dim]
        specs.append((vi.name, helper.tensor_dtype_to_np_dtype(t.elem_type), shape))
    batch_static = all(s and isinstance(s[0], int) for _, _, s in specs)
    batches = [specs[0][2][0]] if specs and batch_static else None

    def make(batch, directory):
        rng, feeds = _rng(path), {}
        for name, dtype, shape in specs:
            concrete = []
            for axis, d in enumerate(shape):
                if isinstance(d, int):
                    concrete.append(d)
                elif axis == 0:
                    concrete.append(batch)
                elif d in dims:
                    concrete.append(dims[d])
                else:
                    raise ValueError(f"input {name!r} has symbolic dimension {d!r}: give it a "
                                     f"size with --dim {d}=N")
            if np.issubdtype(dtype, np.floating):
                feeds[name] = rng.standard_normal(concrete).astype(dtype)
            elif dtype == np.bool_:
                feeds[name] = np.ones(concrete, dtype)
            elif "mask" in name.lower():
                feeds[name] = np.ones(concrete, dtype)
            else:
                feeds[name] = rng.integers(0, 2, concrete).astype(dtype)
        return os.path.abspath(path), feeds

    return Bench(name, "user", make, path, batches)
