"""``torch.compile(model, backend="slimc")``: slimc as a TorchDynamo backend.

pyproject.toml registers `slimc_backend` under the ``torch_dynamo_backends`` entry point, so
``backend="slimc"`` works after ``pip install slimc`` without importing slimc. Each graph
Dynamo captures goes through AOTAutograd's inference path (`aot_module_simplified`) with the
decomposition table `from_torch` uses (and the ops it keeps whole kept whole: see
`aot_decompositions`), and its ATen graph through the same converters (`convert_fx_graph`):
the same ops reach slimc whichever way a model comes in.

Parameters and buffers (Dynamo passes them as graph inputs) become constants, as `from_torch`
makes them, so folding, batch-norm folding, pre-packed weights and Winograd apply: the weights
are frozen at compile time, as Inductor's ``freezing`` does. A call checks that each weight is
still the same storage at the same version, and recompiles if one was changed in place or
replaced, so a changed weight is never silently ignored.

Shapes: Dynamo's symbolic sizes (``dynamic=True``, or after a second shape) become slimc's
symbolic dims and the slimc Module compiles once per concrete shape; with ``dynamic=False``
torch's guards recompile the graph for a new shape.

Options, ``torch.compile(..., options={...})``: `OPTIONS` below. ``quantize="dynamic"`` runs
`slimc.quantize` (dynamic int8; a backend has no calibration data for static), and
``fallback=True`` leaves a graph slimc cannot compile to PyTorch with a warning instead of
raising one error that lists every unsupported op.

Inference only: a graph that would need gradients (grad mode on and a parameter or input that
requires grad) is refused with a clear error; run the model under ``torch.no_grad()`` or
``torch.inference_mode()``. Tensors pass in and out without copies where layouts allow
(contiguous CPU inputs are read through numpy views; outputs wrap slimc's fresh arrays).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Optional

import numpy as np

from slimc.compiler import compile as slimc_compile
from slimc.frontends.torch import (Placeholder, aot_decompositions, check_dtypes,
                                   convert_fx_graph)
from slimc.ir import InputError, SlimcError, UnsupportedError
from slimc.ir.debug import log

# name -> default; what ``options=`` may hold
OPTIONS = {
    "opt_level": 2,  # slimc.compile's -O level
    "threads": None,  # worker threads of the compiled code (None: slimc's default)
    "quantize": None,  # None | "dynamic": int8 matmuls and convs, activations per row
    "fallback": False,  # True: a graph slimc cannot compile runs in PyTorch, with a warning
    "target": "x86",  # a CPU target: the tensors are on the host
    "dump_dir": None,  # slimc's per-pass IR dumps of each graph, for debugging
}


def _options(options: Optional[dict], mode: Optional[str]) -> dict:
    opts = dict(OPTIONS)
    unknown = set(options or {}) - set(OPTIONS)
    if unknown:
        raise InputError(f"torch.compile(backend='slimc'): unknown option(s) {sorted(unknown)}; "
                         f"slimc takes {', '.join(OPTIONS)}")
    opts.update(options or {})
    if opts["quantize"] not in (None, "dynamic"):
        raise InputError(f"torch.compile(backend='slimc'): quantize must be None or 'dynamic' "
                         f"(a backend sees no calibration data), got {opts['quantize']!r}")
    if mode not in (None, "default"):
        warnings.warn(f"slimc ignores torch.compile(mode={mode!r}); its options are "
                      f"{', '.join(OPTIONS)}", stacklevel=3)
    return opts


def slimc_backend(gm, example_inputs, options: Optional[dict] = None,
                  mode: Optional[str] = None) -> Callable:
    """The TorchDynamo backend: compile one captured graph (`gm` on `example_inputs`)."""
    from torch._functorch.aot_autograd import aot_module_simplified

    opts = _options(options, mode)
    try:
        _check_inference(gm, example_inputs)
    except SlimcError as e:
        return _fall_back(e, gm.forward, opts)
    full_args, names, weights = _arguments(gm, example_inputs)

    def fw_compiler(fx_module, _fake_inputs):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        try:
            with unset_fake_temporarily():  # AOTAutograd calls this under fake tensors
                return _Compiled(fx_module, full_args, names, weights, opts)
        except SlimcError as e:
            return _fall_back(e, fx_module, opts)

    keep_whole, table = aot_decompositions()
    with keep_whole:
        return aot_module_simplified(gm, example_inputs, fw_compiler=fw_compiler,
                                     decompositions=table)


def _fall_back(error: SlimcError, run: Callable, opts: dict) -> Callable:
    if not opts["fallback"]:
        raise error
    warnings.warn(f"slimc: this graph runs in PyTorch (options fallback=True): {error}",
                  stacklevel=2)
    return run


def _check_inference(gm, example_inputs) -> None:
    """Refuse what slimc would compute wrongly or not at all: a graph that needs gradients,
    tensors off the CPU. (Dtypes are checked on AOTAutograd's graph: Dynamo's first try may
    pass Python floats as float64 tensors, which AOTAutograd specializes away.)"""
    import torch

    tensors = [(_input_name(n), t) for n, t in zip(gm.graph.find_nodes(op="placeholder"),
                                                  example_inputs)
               if isinstance(t, torch.Tensor)]
    needs_grad = [name for name, t in tensors if t.requires_grad]
    if needs_grad and torch.is_grad_enabled():
        shown = ", ".join(needs_grad[:3]) + (", ..." if len(needs_grad) > 3 else "")
        raise InputError(f"slimc compiles inference, and this graph needs gradients ({shown} "
                         f"require grad and grad mode is on): call the model under "
                         f"torch.no_grad() or torch.inference_mode()")
    off_cpu = [f"{name} ({t.device})" for name, t in tensors if t.device.type != "cpu"]
    if off_cpu:
        raise UnsupportedError(f"torch.compile(backend='slimc') runs CPU tensors; "
                               f"{', '.join(off_cpu[:3])} are not on the CPU")


_SOURCE_PARTS = ((re.compile(r"\._(?:modules|parameters|buffers)\["), "["),
                 (re.compile(r"^L\['(?:self|fn)'\]\.?|^L\['([^']+)'\]"), r"\1"),
                 (re.compile(r"\['?([^'\]]+)'?\]"), r".\1"))


def _input_name(node) -> str:
    """A Dynamo placeholder's name as the user wrote it: ``fc.weight`` for
    ``L['self']._modules['fc']._parameters['weight']``, ``x`` for ``L['x']``, ``args.0`` for
    ``L['args'][0]``; Dynamo's placeholder name when the source says something else."""
    source = getattr(node, "_dynamo_source", None)
    text = getattr(source, "name", "") if source is not None else ""
    for pattern, replacement in _SOURCE_PARTS:
        text = pattern.sub(replacement, text)
    text = text.lstrip(".")
    return text if re.fullmatch(r"[A-Za-z_][\w.]*", text) else node.name


def _arguments(gm, example_inputs) -> tuple[list, list, set]:
    """AOTAutograd's flat arguments (the graph module's own parameters and buffers, which
    Dynamo usually lifts into inputs, then the inputs), their names, and the positions of the
    parameters and buffers among them: the values to freeze into constants."""
    own = dict(gm.named_parameters(remove_duplicate=False))
    own.update(gm.named_buffers(remove_duplicate=False))
    names, weights = list(own), set(range(len(own)))
    for node in gm.graph.find_nodes(op="placeholder"):
        if (node.meta.get("tensor_dict") or {}).get("_dynamo_static_input_type"):
            weights.add(len(names))
        names.append(_input_name(node))
    return list(own.values()) + list(example_inputs), names, weights


class _Compiled:
    """One AOTAutograd forward graph as a slimc Module: called with AOTAutograd's flat
    arguments (weights, sizes and tensors), it passes the tensors on and returns tensors."""

    def __init__(self, fx_module, full_args: list, names: list, weights: set, opts: dict):
        import torch

        placeholders = list(fx_module.graph.find_nodes(op="placeholder"))
        matched = len(placeholders) == len(full_args)
        self.fx_graph, self.placeholders, self.opts = fx_module.graph, placeholders, opts
        # AOTAutograd merged or added arguments: every argument stays an input (right, slower)
        names = names if matched else [n.name for n in placeholders]
        check_dtypes((names[i], n.meta["val"]) for i, n in enumerate(placeholders)
                     if isinstance(n.meta.get("val"), torch.Tensor))
        self.names = names
        self.weight_names = {i: names[i] for i in weights} if matched else {}
        self.inputs = [i for i, n in enumerate(placeholders) if i not in self.weight_names
                       and isinstance(n.meta.get("val"), torch.Tensor)]
        self._build({i: full_args[i] for i in self.weight_names})
        if matched:  # compile for the example's shapes now, not at the first call
            self.module.specialization(*[_to_numpy(full_args[i]) for i in self.inputs])

    def _build(self, weights: dict) -> None:
        roles = {n.name: Placeholder("constant", self.weight_names[i], weights[i])
                 if i in weights else Placeholder("input", self.names[i])
                 for i, n in enumerate(self.placeholders)}
        graph = convert_fx_graph(self.fx_graph, roles, name="torch_compile")
        if self.opts["quantize"] == "dynamic":
            from slimc.quantize import quantize

            graph = quantize(graph, mode="dynamic")
        self.module = slimc_compile(graph, target=self.opts["target"],
                                    opt_level=self.opts["opt_level"],
                                    threads=self.opts["threads"], dump_dir=self.opts["dump_dir"])
        self.frozen = [(i, t.data_ptr(), t._version) for i, t in weights.items()]

    def __call__(self, *args) -> list:
        import torch

        for i, ptr, version in self.frozen:
            if args[i].data_ptr() != ptr or args[i]._version != version:
                log("compile", f"torch backend: weight {self.weight_names[i]} changed since "
                               f"it was compiled in: recompiling")
                self._build({j: args[j] for j, _, _ in self.frozen})
                break
        outs = self.module(*[_to_numpy(args[i]) for i in self.inputs])
        return [_to_torch(o, torch) for o in outs]


def _to_numpy(t: Any) -> np.ndarray:
    """A CPU tensor as a numpy array: a view when it is contiguous (no copy)."""
    import torch

    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:
        from slimc.ir import dtypes

        return t.view(torch.int16).numpy().view(dtypes.bf16.numpy)
    return t.numpy()


def _to_torch(a: np.ndarray, torch) -> Any:
    from slimc.ir import dtypes

    if a.dtype == dtypes.bf16.numpy:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
