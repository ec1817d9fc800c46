"""The README's main job: build a small CNN, compile it to native code, run it, compare.

The model is built here with onnx.helper (random but realistically scaled weights), so the
demo needs nothing downloaded. Its result is checked against onnxruntime when installed.
"""

from __future__ import annotations

import time

import numpy as np


def build_demo_model(seed: int = 0):
    """A small image classifier: conv-bn-relu, pool, a residual block, global pool, gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)

    inits = [weight("conv1.w", 16, 3, 3, 3), weight("conv1.b", 16),
             weight("block.conv_a.w", 16, 16, 3, 3), weight("block.conv_b.w", 16, 16, 3, 3),
             numpy_helper.from_array(np.ones(16, np.float32), "bn.scale"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "bn.bias"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "bn.mean"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn.var"),
             weight("fc.w", 10, 16), weight("fc.b", 10)]
    nodes = [
        helper.make_node("Conv", ["image", "conv1.w", "conv1.b"], ["conv1"], name="stem/conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv1", "bn.scale", "bn.bias", "bn.mean",
                                                "bn.var"], ["bn1"], name="stem/bn"),
        helper.make_node("Relu", ["bn1"], ["relu1"], name="stem/relu"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="stem/pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "block.conv_a.w"], ["block.a"], name="block/conv_a",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["block.a"], ["block.a_relu"], name="block/relu_a"),
        helper.make_node("Conv", ["block.a_relu", "block.conv_b.w"], ["block.b"],
                         name="block/conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["block.b", "pool1"], ["block.sum"], name="block/residual"),
        helper.make_node("Relu", ["block.sum"], ["block.out"], name="block/relu_out"),
        helper.make_node("GlobalAveragePool", ["block.out"], ["gap"], name="head/gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="head/flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="head/fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="head/softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "demo_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> int:
    import slimc

    model = build_demo_model()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    t0 = time.perf_counter()
    mod = slimc.compile(model, input_shapes={"image": x.shape})
    t1 = time.perf_counter()
    print(mod.graph)
    print("kernels after fusion:")
    for k in mod.kernels:
        print(f"  {k.name}: {' + '.join(k.ops)}")
    print(mod.memory)
    (probs,) = mod(x)
    runs = []
    for _ in range(20):
        t = time.perf_counter()
        mod(x)
        runs.append(time.perf_counter() - t)
    reference = slimc.interpret(slimc.from_onnx(model, input_shapes={"image": x.shape}), x)[0]
    print(f"compile {1e3 * (t1 - t0):.0f} ms, run {1e3 * float(np.median(runs)):.3f} ms (median of 20); "
          f"predicted classes {probs.argmax(axis=1).tolist()}")
    ok = bool(np.allclose(probs, reference, rtol=1e-3, atol=1e-4))
    print(f"native code agrees with slimc's reference interpreter: {ok}")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: skipping that comparison")
        return 0 if ok else 1
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = sess.run(None, {"image": x})
    err = float(np.max(np.abs(probs - expected)))
    agree = bool(np.allclose(probs, expected, rtol=1e-3, atol=1e-4))
    print(f"onnxruntime agrees: {agree} (max abs difference {err:.2e})")
    return 0 if ok and agree else 1
