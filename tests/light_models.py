"""The onnx wheel's opset-9 "light" models in the corpus: as shipped (weights replaced by
ConstantOfShape) and with calibrated random weights in their place (``light_random-*``)."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from tests.corpus_base import CORPUS_VERSION, check_outside_repo, image_input, seed


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

    check_outside_repo(directory)
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

    rng = np.random.default_rng(seed("light_random_" + name))
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


# Light models that also get a random-weights variant (not the ones whose fully connected
# layers hold hundreds of MB).
LIGHT_RANDOM = ("squeezenet", "shufflenet", "inception_v1", "inception_v2", "resnet50",
                "densenet121")

# The light models in the default (not slow) run; the rest run at 224x224 with full-size
# weights. The random-weights shufflenet stands for the original (same ops, real numerics).
LIGHT_FAST = {"squeezenet"}
LIGHT_RANDOM_FAST = {"squeezenet", "shufflenet"}
