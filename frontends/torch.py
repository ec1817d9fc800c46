"""The PyTorch frontend: an ``nn.Module`` and example inputs become a slimc `Graph`.

Capture goes through ``torch.export`` (non-strict), then decomposes to the Core ATen opset with
`decomposition_table`, which keeps whole the ops slimc has better kernels for (linear, layer
norm, softmax, scaled-dot-product attention, GELU, hard-swish, ...): they reach slimc as one op
instead of a dozen that a pass would have to re-recognize. Then, as for ONNX, three steps:

1. check: training mode, inputs that require grad, and dtypes slimc does not compile (float64,
   complex) are refused before anything is traced;
2. scan: every ATen op of the captured graph is looked up in the converter table
   (`frontends/torch_ops/`); everything missing or refused is reported in one
   `UnsupportedError` naming each op, its module path and its source line;
3. convert: user inputs become graph inputs (torch.export's symbolic dims become slimc's
   symbolic dims, named after the user's ``Dim``), parameters, buffers and lifted constants
   become constants as ONNX initializers do, then one converter call per FX node.

Names: a value is named after its module path (``layer1.0.conv1``, its op appended where a
module computes several things: ``layer1.0.add``), constants after their state-dict name, and
each node's ``loc(...)`` is the innermost line of the user's code that made it (``model.py:42``,
frames inside torch skipped), so dumps and errors point at the source.

`convert_fx_graph` is the entry that does not care where the FX graph came from: given each
placeholder's role (an input with its example value, or a constant tensor) it converts any
ATen-level graph, e.g. one AOTAutograd hands a ``torch.compile`` backend.

torch is imported only when a function here runs: slimc imports without torch installed.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from slimc.ir import Graph, InputError, SlimcError, UnsupportedError
from slimc.ir.errors import InternalError


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the tests skip without torch
        raise SlimcError("the PyTorch frontend needs torch (pip install torch)") from e
    return torch


def is_torch_module(model) -> bool:
    """True for an ``nn.Module``, without importing torch when the caller never did."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


# ----- decompositions ------------------------------------------------------------------------

# Ops kept whole: slimc has one op (and a kernel) for each; decomposed, they would arrive as
# chains a pass would have to re-recognize. Names are "aten.<op>.<overload>".
KEEP_WHOLE = (
    "aten.linear.default", "aten.matmul.default", "aten.layer_norm.default",
    "aten.softmax.int", "aten.log_softmax.int", "aten.scaled_dot_product_attention.default",
    "aten.hardswish.default", "aten.hardsigmoid.default", "aten.mish.default",
    "aten.softplus.default", "aten.selu.default", "aten.celu.default", "aten.relu6.default",
    "aten.group_norm.default", "aten.instance_norm.default", "aten.pixel_shuffle.default",
    "aten.einsum.default", "aten.logsumexp.default", "aten.triu.default", "aten.tril.default",
)


def decomposition_table() -> dict:
    """The Core ATen decomposition table without the ops in `KEEP_WHOLE` (for `from_torch`,
    and for AOTAutograd's ``decompositions=`` so a torch.compile backend sees the same ops)."""
    from torch.export import default_decompositions

    table = default_decompositions()
    for op in [op for op in table.keys() if str(op) in KEEP_WHOLE]:
        del table[op]
    return table


def aot_decompositions():
    """(context, table) for AOTAutograd, so a torch.compile graph reaches slimc with the ops
    `from_torch` sees. AOTAutograd decomposes CompositeImplicitAutograd ops (matmul, linear,
    softmax, layer norm, attention...) while it traces, whatever its table says; torch.export
    keeps them by overriding their decompositions during tracing, and so does `context`.
    Without torch's private helper for it, the context does nothing (correct, less fused)."""
    import contextlib

    table = decomposition_table()
    try:
        from torch.export.exported_program import (
            _override_composite_implicit_decomp, _split_decomp_table_to_cia_and_python_decomp)
    except ImportError:  # pragma: no cover - another torch version
        return contextlib.nullcontext(), table
    keep, rest = _split_decomp_table_to_cia_and_python_decomp(table.materialize())
    return _override_composite_implicit_decomp(keep), rest


# ----- checks before capture -----------------------------------------------------------------

def _dtype_problem(dtype) -> Optional[str]:
    """Why slimc cannot compile tensors of `dtype` (None: it can)."""
    from .torch_ops import slimc_dtype

    try:
        slimc_dtype(dtype)
    except UnsupportedError:
        name = str(dtype).replace("torch.", "")
        return f"{name} is not supported (slimc compiles float32, float16, integer and bool " \
               f"tensors; convert with module.float() and float32 inputs)"
    return None


def check_module(module, example_inputs: Sequence) -> None:
    """Refuse what would give a wrong answer rather than a compiled model: training mode (dropout
    and batch statistics), inputs that require grad, dtypes slimc lacks."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    training = [name or type(module).__name__ for name, m in module.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:5]) + (", ..." if len(training) > 5 else "")
        raise InputError(f"the module is in training mode ({shown}): slimc compiles inference; "
                         f"call module.eval() first")
    flat = torch.utils._pytree.tree_leaves(example_inputs)
    for i, t in enumerate(flat):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise InputError(f"example input {i} requires grad: slimc compiles inference; pass "
                             f"a tensor without requires_grad (x.detach())")
    check_dtypes((f"example input {i} (shape {tuple(t.shape)})", t) for i, t in enumerate(flat)
                 if isinstance(t, torch.Tensor))
    check_dtypes((f"parameter/buffer {name!r}", t) for name, t in
                 list(module.named_parameters()) + list(module.named_buffers()))


def check_dtypes(named_tensors) -> None:
    """Raise one UnsupportedError naming the first (what, tensor) whose dtype slimc lacks
    (float64, complex): refused up front rather than failing deep inside conversion."""
    for what, t in named_tensors:
        problem = _dtype_problem(t.dtype)
        if problem:
            raise UnsupportedError(f"{what}: {problem}")


# ----- from_torch ----------------------------------------------------------------------------

@dataclass
class Placeholder:
    """The role of one FX placeholder: a graph input (named; its example value is the node's
    ``meta["val"]`` unless given: a tensor or FakeTensor, or a SymInt that AOTAutograd passes
    as an input) or a constant tensor (`value`)."""

    kind: str  # "input" | "constant" | "literal" (a non-tensor argument, baked in)
    name: str
    value: Any = None


def from_torch(module, example_inputs, *, dynamic_shapes=None, name: Optional[str] = None
               ) -> Graph:
    """Capture `module` on `example_inputs` (a tuple of positional arguments) with torch.export
    and convert it to a slimc Graph. `dynamic_shapes` is torch.export's: its ``Dim``s become
    symbolic dims (named after the Dim) that the compiled Module binds per call."""
    torch = _torch()
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    check_module(module, example_inputs)
    program = _export(module, example_inputs, dynamic_shapes)
    placeholders, symbol_names = _placeholders(program, example_inputs,
                                               _user_dim_names(module, example_inputs,
                                                               dynamic_shapes))
    return convert_fx_graph(program.graph_module.graph, placeholders,
                            name=name or type(module).__name__, symbol_names=symbol_names)


def _export(module, args: tuple, dynamic_shapes):
    torch = _torch()
    import contextlib
    import io
    import logging
    import warnings

    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes,
                                          strict=False)
            return program.run_decompositions(decomposition_table())
    except SlimcError:
        raise
    except Exception as e:
        # torch.export explains what it cannot trace (data-dependent control flow, guards on
        # dynamic dims); its message is the useful part, the traceback is torch's.
        first = str(e).strip().split("\n\n")[0]
        raise UnsupportedError(f"torch.export could not capture the module: "
                               f"{type(e).__name__}: {first}") from e
    finally:
        logger.setLevel(level)


def _placeholders(program, example_inputs: tuple, dim_names: dict) -> tuple[dict, dict]:
    """Each placeholder's role, and torch's symbols -> the names of the user's Dims."""
    from torch.export.graph_signature import InputKind

    torch = _torch()
    tensors = [t for t in torch.utils._pytree.tree_leaves(example_inputs)
               if isinstance(t, torch.Tensor)]
    vals = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    out, symbol_names, user = {}, {}, 0
    for spec in program.graph_signature.input_specs:
        arg = spec.arg.name
        if spec.kind == InputKind.USER_INPUT and not hasattr(spec.arg, "value"):
            example = tensors[user] if user < len(tensors) else None
            for axis, name in dim_names.get(id(example), {}).items():
                d = vals[arg].shape[axis] if hasattr(vals.get(arg), "shape") else None
                if _is_symint(d) and d.node.expr.is_Symbol:
                    symbol_names.setdefault(str(d.node.expr), name)
            out[arg] = Placeholder("input", arg)
            user += 1
        elif spec.kind == InputKind.USER_INPUT:  # a Python value torch.export specialized on
            out[arg] = Placeholder("literal", arg, spec.arg.value)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            data = program.state_dict.get(spec.target)
            if data is None:
                data = program.constants.get(spec.target)
            if data is None:
                raise InternalError(f"no data for {spec.kind.name.lower()} {spec.target!r}",
                                    where="torch frontend")
            out[arg] = Placeholder("constant", spec.target, data)
        else:
            raise UnsupportedError(f"input {arg!r} is a {spec.kind.name.lower()} "
                                   f"(custom objects and effect tokens are not supported)")
    return out, symbol_names


def _user_dim_names(module, example_inputs: tuple, dynamic_shapes) -> dict:
    """id(example tensor) -> {axis: Dim name}, walking `dynamic_shapes` beside the inputs as
    torch.export matches them (by forward's parameters; ``*args`` is one parameter)."""
    torch = _torch()
    names: dict = {}

    def walk(arg, spec):
        if spec is None:
            return
        if isinstance(arg, torch.Tensor):
            axes = spec.items() if isinstance(spec, dict) else enumerate(spec)
            found = {a: getattr(d, "__name__", None) for a, d in axes if d is not None}
            names[id(arg)] = {a: n for a, n in found.items() if isinstance(n, str)}
        elif isinstance(arg, (list, tuple)) and isinstance(spec, (list, tuple)):
            for a, s in zip(arg, spec):
                walk(a, s)
        elif isinstance(arg, dict) and isinstance(spec, dict):
            for k, a in arg.items():
                walk(a, spec.get(k))

    if dynamic_shapes is None:
        return names
    try:
        from torch.export.dynamic_shapes import _combine_args

        combined = _combine_args(module, example_inputs, {})
    except Exception:  # a private helper of torch.export: without it, dims keep torch's names
        return names
    if isinstance(dynamic_shapes, dict):
        for key, arg in combined.items():
            walk(arg, dynamic_shapes.get(key))
    else:
        for arg, spec in zip(combined.values(), dynamic_shapes):
            walk(arg, spec)
    return names


# ----- the FX graph ---------------------------------------------------------------------------

# Nodes that check or constrain things at run time in PyTorch and compute nothing.
_NO_OP_NAMES = ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range",
                "sym_constrain_range_for_size", "_assert_async")

# ATen ops slimc refuses on purpose (op name prefix -> why), so the error says more than
# "no converter".
REFUSED = {
    "aten._local_scalar_dense": "reads a tensor's value as a Python number (.item()): what "
                                "follows would depend on the data",
    "aten.nonzero": "the result's shape depends on the data",
    "aten.masked_select": "the result's shape depends on the data",
    "aten.masked_scatter": "the result's shape depends on the data",
    "aten.native_dropout": "dropout in training mode (call module.eval())",
    "aten._native_batch_norm_legit_functional": "batch norm with batch statistics: the module "
                                                "is in training mode (module.eval())",
    "aten._fft": "FFTs compute complex tensors",
    **{f"aten.{r}": "random numbers" for r in (
        "rand", "randn", "randint", "randperm", "bernoulli", "uniform", "normal",
        "exponential", "multinomial", "poisson")},
}


def convert_fx_graph(fx_graph, placeholders: Mapping[str, Placeholder], *,
                     name: str = "main", symbol_names: Optional[Mapping] = None) -> Graph:
    """Convert an ATen-level FX graph (each node's ``meta["val"]`` set, as torch.export and
    AOTAutograd leave it) given each placeholder's role, keyed by placeholder name.
    `symbol_names` renames torch's symbols (``s77``) in the input types (``batch``)."""
    from .torch_ops import TorchContext, find_converter, input_type

    nodes = _live(list(fx_graph.nodes))
    _scan(nodes, placeholders)
    graph = Graph(name)
    env: dict = {}
    names = _value_names(nodes)
    sym_inputs = []
    for node in nodes:
        if node.op != "placeholder":
            continue
        role = placeholders[node.name]
        if role.kind == "literal":
            env[node] = role.value
        elif role.kind == "constant":
            data = _numpy(role.value, role.name)
            env[node] = graph.add_constant(role.name, data)
        elif _is_symint(role.value if role.value is not None else node.meta.get("val")):
            sym_inputs.append(node)
        else:
            example = role.value if role.value is not None else node.meta.get("val")
            env[node] = graph.add_input(role.name, input_type(example, symbol_names))
    for node in sym_inputs:  # AOTAutograd passes dims as inputs: read them off the tensors
        env[node] = _symint_input(graph, node, env)
    outputs = []
    for node in nodes:
        if node.op == "output":
            outputs = _torch().utils._pytree.tree_leaves(node.args[0])
            continue
        if node.op != "call_function" or _is_no_op(node):
            continue
        label, loc = describe(node), source_line(node)
        ctx = TorchContext(graph, node, env, names.get(node, "v"), loc, label)
        try:
            result = find_converter(node.target).fn(ctx)
        except SlimcError:
            raise
        except Exception as e:
            raise InternalError(f"{type(e).__name__}: {e} (while converting {label})",
                                where=f"torch converter for {_op_name(node.target)}") from e
        env[node] = ctx.finish(result)
    graph.outputs = [_output_value(graph, env, o, i) for i, o in enumerate(outputs)]
    for c in [c for c in graph.constants.values() if not c.uses and c not in graph.outputs]:
        graph.remove_constant(c)  # buffers nothing reads, constants only a converter read
    return graph


def _live(nodes) -> list:
    """The nodes the outputs depend on, in order: what only feeds PyTorch's run-time checks
    (size comparisons for ``_assert_scalar``) is neither converted nor refused."""
    live = set()
    work = [n for n in nodes if n.op == "output"]
    while work:
        n = work.pop()
        if n in live:
            continue
        live.add(n)
        work.extend(n.all_input_nodes)
    return [n for n in nodes if n in live or n.op == "placeholder"]


def _is_symint(x) -> bool:
    torch = _torch()
    return isinstance(x, torch.SymInt)


def _symint_input(graph: Graph, node, env: dict):
    """A SymInt placeholder as the shape of the first input tensor that has it as a dim."""
    from .torch_ops import SymInt

    expr = node.meta["val"].node.expr
    for other, v in env.items():
        val = other.meta.get("val")
        if other.op != "placeholder" or not hasattr(val, "shape"):
            continue
        for axis, d in enumerate(val.shape):
            if _is_symint(d) and d.node.expr == expr:
                from slimc.ir.builder import add_op

                shape = add_op(graph, "shape", [v], {"start": axis, "end": axis + 1},
                               output_name=node.name).output
                return SymInt(shape, v.type.shape[axis] if isinstance(v.type.shape[axis], str)
                              else None)
    raise UnsupportedError(f"the symbolic size {node.name} ({expr}) is the size of no input "
                           f"tensor's dimension")


def _output_value(graph: Graph, env: dict, out, i: int):
    from slimc.ir.builder import add_op

    if out is None or not hasattr(out, "op") or not hasattr(env.get(out), "type"):
        raise UnsupportedError(f"output {i} is {type(out).__name__} {out!r}: slimc models "
                               f"return tensors only")
    v = env[out]
    if v.is_graph_input or v.is_constant or v in graph.outputs:
        # an output that is an input, a weight or another output gets its own value
        v = add_op(graph, "identity", [v], output_name=f"output{i}").output
    return v


def _is_no_op(node) -> bool:
    name = getattr(node.target, "__name__", "")
    return name.split(".")[0] in _NO_OP_NAMES


def _numpy(t, name: str) -> np.ndarray:
    torch = _torch()
    if not isinstance(t, torch.Tensor):
        raise UnsupportedError(f"constant {name!r} is a {type(t).__name__}, not a tensor")
    t = t.detach()
    if t.dtype == torch.bfloat16:
        from slimc.ir import dtypes

        return t.view(torch.int16).numpy().view(dtypes.bf16.numpy).copy()
    return t.cpu().contiguous().numpy().copy()  # (np.ascontiguousarray makes 0-d 1-d)


# ----- scanning for what slimc cannot convert --------------------------------------------------

def _scan(nodes, placeholders: Mapping[str, Placeholder]) -> None:
    """Raise one UnsupportedError listing every op slimc cannot convert, each with where it is
    (module path and source line), and every value of a dtype slimc lacks."""
    from .torch_ops import find_converter

    problems: dict[str, list] = {}
    for node in nodes:
        if node.op == "placeholder" and node.name not in placeholders:
            raise InternalError(f"placeholder {node.name!r} has no role", where="torch frontend")
        if node.op != "call_function" or _is_no_op(node):
            continue
        conv = find_converter(node.target)
        why = _refused(node.target) if conv is None else conv.refuse(node)
        if why is None:
            why = _value_dtype_problem(node)
        if why is not None:
            problems.setdefault(f"{_op_name(node.target)} ({why})", []).append(node)
    if not problems:
        return
    lines = []
    for what, where in sorted(problems.items(), key=lambda kv: -len(kv[1])):
        shown = "; ".join(_where(n) for n in where[:3]) + ("; ..." if len(where) > 3 else "")
        lines.append(f"  {what}: {len(where)} node(s), at {shown}")
    raise UnsupportedError(f"the module uses {len(problems)} ATen op(s) slimc cannot convert:\n"
                           + "\n".join(lines))


def _refused(target) -> str:
    name = _op_name(target)
    if name.split(".")[1].endswith("_backward"):
        return "a backward (training) op"
    for prefix, why in REFUSED.items():
        if name.startswith(prefix):
            return why
    return "no converter"


def _value_dtype_problem(node) -> Optional[str]:
    torch = _torch()
    for v in torch.utils._pytree.tree_leaves(node.meta.get("val")):
        if isinstance(v, torch.Tensor):
            problem = _dtype_problem(v.dtype)
            if problem:
                return f"its result: {problem}"
    return None


def _op_name(target) -> str:
    name = str(target)
    if name.startswith("<"):  # a Python builtin (operator.mul on sizes)
        return getattr(target, "__module__", "") + "." + getattr(target, "__name__", name)
    return name


_DYNAMO_ROOT = re.compile(r"^L\['(?:self|fn)'\]\.?")
_DYNAMO_ITEM = re.compile(r"\[['\"]?([^'\"\]]+)['\"]?\]")


def module_path(node) -> str:
    """The innermost module path of the node (``layer1.0.conv1``); "" at the top level.
    Dynamo's spelling (``L['self'].layer1[0].conv1``; ``L['fn']`` for a compiled
    ``nn.Sequential``) reads the same."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        if isinstance(path, str) and not path.startswith("_"):
            path = _DYNAMO_ITEM.sub(r".\1", _DYNAMO_ROOT.sub("", path))
            return path.lstrip(".")
    return ""


def _where(node) -> str:
    path, loc = module_path(node), source_line(node)
    return " ".join(p for p in (path or "<top>", f"({loc})" if loc else "") if p)


def describe(node) -> str:
    """How errors name an FX node: its ATen op, module path and source line."""
    return f"{_op_name(node.target)} at {_where(node)}"


# ----- names and source lines ------------------------------------------------------------------

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_TORCH_DIR = os.sep + "torch" + os.sep


def source_line(node) -> str:
    """``file:line`` of the innermost frame of the node's stack trace outside torch itself."""
    trace = node.meta.get("stack_trace") or ""
    frames = [(f, int(n)) for f, n in _FRAME.findall(trace) if _TORCH_DIR not in f]
    if not frames:
        return ""
    path, line = frames[-1]
    return f"{_short_path(path)}:{line}"


def _short_path(path: str) -> str:
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        if marker in path:
            return path.split(marker, 1)[1]
    cwd = os.getcwd() + os.sep
    return path[len(cwd):] if path.startswith(cwd) else path


def _value_names(nodes) -> dict:
    """FX node -> base name of its value: the module path where a module computes one kind of
    thing (``layer1.0.conv1``, ``layer1.0.relu`` twice), else path and op (``layer1.0.add``)."""
    computing = [n for n in nodes if n.op == "call_function" and not _is_no_op(n)
                 and not str(n.target).startswith("<")]
    ops_of: dict[str, set] = {}
    for n in computing:
        ops_of.setdefault(module_path(n), set()).add(_short_op(n))
    paths = set(ops_of)
    out = {}
    for n in nodes:
        if n.op != "call_function":
            continue
        path, short = module_path(n), _short_op(n)
        leaf = path and not any(p.startswith(path + ".") for p in paths)
        if path and leaf and len(ops_of.get(path, ())) == 1:
            out[n] = path
        else:
            out[n] = f"{path}.{short}" if path else short
    return out


def _short_op(node) -> str:
    name = getattr(node.target, "__name__", None) or str(node.target)
    return name.split(".")[0].lstrip("_") or "v"
