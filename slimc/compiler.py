"""`slimc.compile`: model in, callable native module out.

A `Module` is specialized to concrete input shapes. Dimensions the model leaves symbolic (and
`input_shapes` does not bind) are bound at the first call; a call with other shapes compiles
and caches another specialization, as torch.compile's guards do.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from slimc.codegen.backend import CompileOptions
from slimc.ir import Graph, InputError, ModelError, SlimcError
from slimc.ir.buffers import small_pages
from slimc.ir.interpreter import order_inputs, run_node
from slimc.passes import PassManager, standard_pipeline
from slimc.passes.basic import InferShapes

from .target import Target


def _bind(graph: Graph, shapes: Sequence[tuple]) -> Graph:
    """A copy of `graph` with its inputs' symbolic dims set from concrete shapes."""
    g = graph.clone()
    binding: dict = {}
    for v, shape in zip(g.inputs, shapes):
        if len(shape) != v.type.rank:
            raise InputError(f"input {v.name!r} expects {v.type}, got shape {list(shape)}")
        for d, s in zip(v.type.shape, shape):
            if isinstance(d, int) and d != s:
                raise InputError(f"input {v.name!r} expects {v.type}, got shape {list(shape)}")
            if isinstance(d, str):
                if binding.setdefault(d, s) != s:
                    raise InputError(f"input {v.name!r}: dimension {d} is {binding[d]} in another "
                                     f"input but {s} here")
        v.type = v.type.with_shape(shape)
    InferShapes().run(g)
    _fold_bound_sizes(g)
    return g


def _fold_bound_sizes(graph: Graph, limit: int = 1 << 16) -> None:
    """Turn sizes computed from bound shapes into constants, to a fixed point: InferShapes
    alone leaves ``shape -> slice/range/expand/reshape`` chains (ONNX Shape ops, sizes of
    torch.export's symbolic dims) with unknown dims, which the CPU backend cannot compile.
    Only what depends on a bound size folds (small results only): a general FoldConstants
    here would fold a dequantized int8 weight back to float before FoldQDQ sees it."""
    bound: set = set()
    infer, changed = InferShapes(), True
    while changed:
        changed = False
        for node in list(graph.nodes):
            ins, out = [v for v in node.inputs if v is not None], node.outputs[0]
            if node.op in ("shape", "size") and ins[0].type.is_static:
                x = ins[0].type
                datas = [np.broadcast_to(np.zeros((), x.dtype.numpy), x.shape)]
            elif any(id(v) in bound for v in ins) and all(v.data is not None for v in ins):
                datas = [None if v is None else v.data for v in node.inputs]
            else:
                continue
            if len(node.outputs) > 1 or out in graph.outputs or not out.type.is_static \
                    or out.type.numel > limit:
                continue
            try:
                [data] = run_node(node, datas)
            except ModelError:
                continue  # it fails at run time too, and reports there
            const = graph.add_constant(out.name + ".bound", data, out.type)
            bound.add(id(const))
            out.replace_all_uses_with(const)
            graph.remove_node(node)
            graph.rename(const, out.name)
            changed = True
        changed = infer.run(graph) or changed


# Stages of code generation that disable_passes= can name besides the graph passes.
CODEGEN_STAGES = ("fusion",)


def pipeline(target: "str | Target", opt_level: int = 2, user_passes: Sequence = (),
             disable_passes: Sequence[str] = ()) -> list:
    """The passes `compile` runs for `target`: the standard ones of `opt_level`, the user's,
    then the target's own (the CPU's Winograd and layout, configured for its vector width
    and cost model). The one place a pipeline is assembled: `slimc ir --after`,
    `slimc.debug.compare` and bench.passes call it too, so they see what `compile` does."""
    backend = Target.of(target).backend
    graph_passes_off = [n for n in disable_passes if n not in CODEGEN_STAGES]
    return standard_pipeline(opt_level, user_passes, graph_passes_off,
                             target_passes=backend.pipeline_passes(
                                 opt_level, frozenset(graph_passes_off)))


class Module:
    """What `slimc.compile` returns: call it with numpy arrays (positionally or by name)."""

    def __init__(self, graph: Optional[Graph], target: "str | Target", opt_level: int, passes,
                 disable_passes, dump_dir: Optional[str], threads: Optional[int],
                 denormals: str = "flush", import_seconds: float = 0.0,
                 buckets: Optional[Mapping[str, Sequence[int]]] = None, *, cached=None,
                 load_source=None):
        """`cached` (graph None): the one specialization, which `compile` found in the cache
        by file; the source graph is imported by `load_source()` only if asked for."""
        self._source_graph, self._load_source = graph, load_source
        self.input_names = list(cached.input_names) if cached is not None else \
            [v.name for v in graph.inputs]
        self._cache_keys: dict = {}  # shapes -> the compile cache's key for them
        self.buckets = Buckets(graph, buckets) if buckets else None
        self._import_seconds = import_seconds  # reported with the first specialization
        self.target = Target.of(target)
        self.opt_level = opt_level
        self.user_passes = list(passes)
        self.disable_passes = list(disable_passes)
        self.dump_dir = dump_dir
        self.threads = threads
        self.denormals = denormals
        self._specializations: dict = {}
        self._lock = threading.Lock()
        self._last = None
        self._repeat = None  # see __call__
        self._runnable = False  # set by the first call that finds the target is this host
        if cached is not None:
            self._last = cached
            self._specializations[tuple(tuple(spec[2]) for spec in cached._inputs)] = cached
        elif all(v.type.is_static for v in graph.inputs):
            self._last = self._specialize(tuple(v.type.shape for v in graph.inputs))

    @property
    def source_graph(self) -> Graph:
        """The model as imported, before any pass."""
        if self._source_graph is None:
            self._source_graph = self._load_source()
        return self._source_graph

    def _specialize(self, shapes: tuple):
        compiled = self._specializations.get(shapes)  # a call's path: no lock, no setting
        if compiled is not None:
            return compiled
        with small_pages():  # see there: faster to compile and load, faster to run
            return self._specialize_on_small_pages(shapes)

    def _specialize_on_small_pages(self, shapes: tuple):
        from slimc.driver import build
        from slimc.runtime import cache

        with self._lock:
            compiled = self._specializations.get(shapes)
            if compiled is not None:
                return compiled
        start = time.perf_counter()
        times = {"import": self._import_seconds} if self._import_seconds else {}
        self._import_seconds = 0.0
        graph = _bind(self.source_graph, shapes)
        backend = self.target.backend
        options = CompileOptions(opt_level=self.opt_level, threads=self.threads,
                                 denormals=self.denormals,
                                 fusion="fusion" not in self.disable_passes and self.opt_level >= 1,
                                 dump_dir=self.dump_dir,
                                 part_cache=cache.PartCache() if cache.cache_dir() else None)
        key = None
        if not self.user_passes and not self.dump_dir and backend.cache_identity is not None:
            key = cache.cache_key(graph, backend.cache_identity,
                                  {"opt_level": self.opt_level,
                                   "disable": sorted(self.disable_passes),
                                   "threads": self.threads, "denormals": self.denormals})
            self._cache_keys[shapes] = key
            compiled = cache.lookup(key)
            if compiled is not None:
                times["cache_load"] = time.perf_counter() - start
                compiled.compile_times = _report_times(times, self.source_graph.name)
                with self._lock:
                    self._specializations[shapes] = compiled
                return compiled
        clock = time.perf_counter()
        passes = pipeline(self.target, self.opt_level, self.user_passes, self.disable_passes)
        times["cost_models"] = time.perf_counter() - clock  # a first calibration measures here
        clock = time.perf_counter()
        PassManager(passes, dump_dir=self.dump_dir, check_after=self.user_passes).run(graph)
        times["passes"] = time.perf_counter() - clock
        compiled = build(graph, backend, options, times)
        _report_times(times, self.source_graph.name)
        if key is not None:
            cache.store(key, compiled)
        with self._lock:
            self._specializations[shapes] = compiled
        return compiled

    def specialization(self, *arrays, **named):
        """(the compiled specialization for these inputs, the arrays to give it: padded to
        their buckets when the module has `buckets`)."""
        names = self.input_names
        arrays = order_inputs(names, arrays, named)
        if len(arrays) != len(names):
            raise InputError(f"the model takes {len(names)} inputs ({', '.join(names)}), "
                             f"got {len(arrays)}")
        if self.buckets is not None:
            arrays = self.buckets.pad(arrays)
        shapes = tuple(a.shape if isinstance(a, np.ndarray) else np.shape(a) for a in arrays)
        self._last = self._specialize(shapes)
        return self._last, arrays

    def _check_runnable(self) -> None:
        """Refuse a call before compiling a new specialization that could not run anyway."""
        if self._runnable:
            return
        why = self.target.backend.not_runnable_here()
        if why is not None:
            raise why
        self._runnable = True

    def __call__(self, *arrays, **named) -> list[np.ndarray]:
        repeat = self._repeat  # the specialization the last call ran, while inputs fit it
        if repeat is not None and not named:
            outs = repeat.call_exact(arrays)
            if outs is not None:
                return outs
        self._check_runnable()
        if self.buckets is not None:
            arrays = order_inputs(self.input_names, arrays, named)
            compiled, padded = self.specialization(*arrays)
            return self.buckets.trim(compiled(*padded), arrays)
        compiled, arrays = self.specialization(*arrays, **named)
        outs = compiled(*arrays)
        # it ran: the next call with inputs of exactly its static types takes it directly
        # (same shapes: the same specialization)
        self._repeat = compiled
        return outs

    def _current(self):
        if self._last is None:
            raise SlimcError("the model has symbolic input shapes: call it once (or compile "
                             "with input_shapes=) before inspecting it")
        return self._last

    @property
    def graph(self) -> Graph:
        return self._current().graph

    @property
    def kernels(self):
        return self._current().kernels

    @property
    def llvm_ir(self) -> str:
        return self._current().llvm_ir

    @property
    def assembly(self) -> str:
        return self._current().assembly

    @property
    def memory(self):
        return self._current().memory

    @property
    def compile_times(self) -> dict:
        """Seconds per compile stage of the current specialization: import, cost_models,
        passes, fusion, codegen, memory_plan, ir_text (printing the LLVM IR and cutting it into
        parts), llvm_opt, machine_code (the parts compile in parallel: wall seconds), link (or
        cache_load)."""
        return dict(getattr(self._current(), "compile_times", {}))

    def profile(self, *arrays, repeat: int = 20, alone: bool = False, **named):
        """Median time per kernel on these inputs, as a table (`print(mod.profile(x))`):
        timed inside whole calls, or with `alone=True` each kernel run by itself (warm)."""
        self._check_runnable()
        compiled, arrays = self.specialization(*arrays, **named)
        return compiled.profile(*arrays, repeat=repeat, alone=alone)

    def emulate(self, *arrays, seed: int = 0, **named) -> list[np.ndarray]:
        """A GPU module's kernels run on the CPU with CUDA's semantics (target="cuda"; slow:
        for debugging a GPU kernel without a GPU): blocks and threads in an order drawn from
        `seed`, barriers honoured, shared memory and intermediates NaN until written."""
        compiled, arrays = self.specialization(*arrays, **named)
        if not hasattr(compiled, "emulate"):
            raise SlimcError(f"emulate() runs GPU modules; this one is for {self.target}: "
                             f"call it")
        return compiled.emulate(*arrays, seed=seed)

    @property
    def ptx(self) -> str:
        """The PTX of every kernel (a module compiled for target="cuda")."""
        compiled = self._current()
        if not hasattr(compiled, "ptx"):
            raise SlimcError(f"a module for {self.target} has no PTX (compile for 'cuda')")
        return compiled.ptx

    def export(self, path: str) -> None:
        """Write the current specialization as an artifact directory (see `slimc.load`)."""
        self._current().export(path)


class Buckets:
    """`compile(..., buckets={"sequence": [64, 128, 256, 512]})`: a call whose symbolic dim
    `sequence` is 75 runs the specialization for 128, its inputs padded with zeros along that
    dim and its outputs cut back to the shapes the model gives at 75, so lengths 1 to 512
    cost four compiles, not 512.

    Exact only for a model that ignores what it reads past the real length: a BERT-style
    encoder, whose attention mask is 0 (masked) there and whose every other op works token by
    token, or a causal decoder (no real token attends to a later one). The user declares that
    by asking for buckets. A size above the largest bucket compiles for its own size."""

    def __init__(self, graph: Graph, buckets: Mapping[str, Sequence[int]]):
        self.sizes = {str(name): sorted({int(n) for n in sizes})
                      for name, sizes in buckets.items()}
        self.axes = [[(d, str(dim)) for d, dim in enumerate(v.type.shape)
                      if isinstance(dim, str) and dim in self.sizes] for v in graph.inputs]
        found = {name for axes in self.axes for _, name in axes}
        missing = sorted(set(self.sizes) - found)
        if missing:
            dims = sorted({str(d) for v in graph.inputs for d in v.type.shape
                           if isinstance(d, str)})
            raise InputError(f"buckets name {missing}, which no input has as a symbolic dim "
                             f"(the inputs' symbolic dims: {dims or 'none'})")
        if any(n < 1 for sizes in self.sizes.values() for n in sizes):
            raise InputError(f"bucket sizes must be positive: {self.sizes}")
        self.graph = graph
        self._out_shapes: dict = {}  # real input shapes -> the outputs' shapes

    def pad(self, arrays: Sequence) -> list:
        """The arrays padded with zeros to their buckets."""
        real: dict = {}
        for a, axes in zip(arrays, self.axes):
            for d, name in axes:
                real.setdefault(name, np.shape(a)[d])
        target = {name: next((b for b in self.sizes[name] if b >= n), n)
                  for name, n in real.items()}
        out = []
        for a, axes in zip(arrays, self.axes):
            widths = [(0, 0)] * np.ndim(a)
            for d, name in axes:
                widths[d] = (0, max(0, target[name] - np.shape(a)[d]))
            out.append(np.pad(np.asarray(a), widths) if any(w[1] for w in widths) else a)
        return out

    def trim(self, outputs: Sequence, arrays: Sequence) -> list:
        """The outputs of the padded call cut to the shapes the model gives for `arrays`
        (shape inference on the model bound to their shapes: milliseconds, once a shape)."""
        shapes = tuple(a.shape if isinstance(a, np.ndarray) else np.shape(a) for a in arrays)
        want = self._out_shapes.get(shapes)
        if want is None:
            want = [v.type.shape for v in _bind(self.graph, shapes).outputs]
            self._out_shapes[shapes] = want
        return [y[tuple(slice(0, n) for n in shape)] if tuple(y.shape) != tuple(shape) else y
                for y, shape in zip(outputs, want)]


def _report_times(times: dict, name: str) -> dict:
    """`times`, also printed with ``SLIMC_DEBUG=time``."""
    from slimc.ir.debug import log

    total = sum(times.values())
    log("time", f"compile @{name}: {total:.3f} s: " +
        ", ".join(f"{stage} {s:.3f}" for stage, s in times.items()))
    return times


MAX_THREADS = 4096


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_options(opt_level, threads, passes) -> None:
    """compile's arguments of the wrong kind, said in its words (not a TypeError from deep
    inside, and not a thread count of True or 1.5 taken as 1)."""
    if not _is_int(opt_level):
        raise InputError(f"opt_level must be an int 0..3, got {type(opt_level).__name__} "
                         f"{opt_level!r}")
    if threads is not None and not (_is_int(threads) and 1 <= threads <= MAX_THREADS):
        raise InputError(f"threads must be None (every core) or an int 1..{MAX_THREADS}, got "
                         f"{type(threads).__name__} {threads!r}")
    if isinstance(passes, (str, bytes)) or not isinstance(passes, Iterable):
        raise InputError(f"passes must be a list of passes, got {type(passes).__name__}")
    for p in passes:
        if not (callable(p) and isinstance(getattr(p, "name", None), str)):
            hint = (f" (a pass by name: slimc.passes.make_pass({p!r}); to turn one off: "
                    f"disable_passes=[{p!r}])") if isinstance(p, str) else \
                " (a Pass, or a function decorated with slimc.passes.function_pass)"
            raise InputError(f"passes holds {type(p).__name__} {p!r}, which is not a pass{hint}")


def _check_model_kind(model) -> None:
    """What compile takes as a model, said where it is something else."""
    from onnx import ModelProto

    if isinstance(model, (str, os.PathLike)):
        if os.path.isdir(model):
            raise InputError(f"{os.fspath(model)!r} is a folder, not an ONNX file (an exported "
                             f"slimc artifact loads with slimc.load)")
        return
    if not isinstance(model, (bytes, bytearray, memoryview, ModelProto)):
        raise InputError(f"a model is an ONNX path, bytes or ModelProto, a slimc Graph, or a "
                         f"torch.nn.Module with example_inputs; got {type(model).__name__}")


def import_model(model, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                 example_inputs=None, dynamic_shapes=None) -> Graph:
    """Anything `compile` takes as a model, as a slimc Graph of its own (a Graph is cloned, so
    the caller's stays untouched). `compile`, `quantize` and `prune` all start here. A
    torch.nn.Module is captured on `example_inputs` (torch.export's `dynamic_shapes` make
    dims symbolic)."""
    from slimc.frontends.onnx import from_onnx
    from slimc.frontends.torch import from_torch, is_torch_module

    if is_torch_module(model):
        if example_inputs is None:
            raise InputError("a torch.nn.Module compiles with example_inputs=(...): the "
                             "tensors its forward takes")
        return from_torch(model, example_inputs, dynamic_shapes=dynamic_shapes)
    if example_inputs is not None or dynamic_shapes is not None:
        raise InputError("example_inputs / dynamic_shapes are for torch.nn.Module models")
    if not isinstance(model, Graph):
        _check_model_kind(model)
        return from_onnx(model, input_shapes=input_shapes)
    graph = model.clone()
    if input_shapes:
        by_name = {v.name: v for v in graph.inputs}
        for name, shape in input_shapes.items():
            if name not in by_name:
                raise SlimcError(f"input_shapes names {name!r}, which is not an input")
            by_name[name].type = by_name[name].type.with_shape(tuple(shape))
        InferShapes().run(graph)
    return graph


def simplified_graph(model) -> Graph:
    """The model imported and run through the target-neutral standard pipeline (folding,
    batch norms in the conv weights, recognition): what `quantize` and `prune` rewrite."""
    graph = import_model(model)
    PassManager(standard_pipeline(2)).run(graph)
    return graph


def compile(model, target: "str | Target" = "x86", opt_level: int = 2, threads: Optional[int] = None,
            passes: Sequence = (), disable_passes: Sequence[str] = (), dump_dir: Optional[str] = None,
            input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
            denormals: str = "flush", example_inputs=None, dynamic_shapes=None,
            buckets: Optional[Mapping[str, Sequence[int]]] = None) -> Module:
    """Compile a model (ONNX path, bytes or ModelProto, a slimc Graph, or a torch.nn.Module
    with `example_inputs`, a tuple of its forward's tensors) for `target` (a string such as
    "x86", "x86-64-v3", "aarch64", or a `slimc.Target`). A module's `dynamic_shapes`
    (torch.export's) leave dims symbolic: the Module then compiles once per input shape, or,
    with `buckets={dim: sizes}`, once per bucket (see `Buckets`: for models that mask what
    lies past the real length)."""
    start = time.perf_counter()
    _check_options(opt_level, threads, passes)
    by_file = None
    if (isinstance(model, (str, os.PathLike)) and not passes and dump_dir is None
            and buckets is None):
        by_file = _FileCache(os.fspath(model), target, opt_level, disable_passes, threads,
                             denormals, input_shapes)
        hit = by_file.lookup(start)
        if hit is not None:
            return hit
    graph = import_model(model, input_shapes=input_shapes, example_inputs=example_inputs,
                         dynamic_shapes=dynamic_shapes)
    import_seconds = 0.0 if isinstance(model, Graph) else time.perf_counter() - start
    module = Module(graph, target, opt_level, passes, disable_passes, dump_dir, threads,
                    denormals, import_seconds=import_seconds, buckets=buckets)
    if by_file is not None:
        by_file.store(module)
    return module


class _FileCache:
    """`compile` of an ONNX file that the compile cache has seen: the file's path, size and
    stamps (and its external data's) lead to the compiled model without importing the file
    or hashing its weights (runtime/cache.py: `lookup_by_file`)."""

    def __init__(self, path, target, opt_level, disable_passes, threads, denormals,
                 input_shapes):
        from slimc.runtime import cache

        self.path, self.target = path, target
        self.args = (opt_level, disable_passes, threads, denormals)
        self.input_shapes = input_shapes
        identity = Target.of(target).backend.cache_identity
        self.key = None
        if identity is not None and cache.cache_dir() is not None and os.path.isfile(path):
            options = {"opt_level": opt_level, "disable": sorted(disable_passes),
                       "threads": threads, "denormals": denormals,
                       "input_shapes": sorted((input_shapes or {}).items())}
            self.key = cache.file_key(path, identity, options)

    def lookup(self, start: float) -> Optional[Module]:
        from slimc.runtime import cache

        compiled = cache.lookup_by_file(self.key) if self.key else None
        if compiled is None:
            return None
        compiled.compile_times = _report_times({"cache_load": time.perf_counter() - start},
                                               os.path.basename(self.path))
        opt_level, disable_passes, threads, denormals = self.args
        return Module(None, self.target, opt_level, (), disable_passes, None, threads,
                      denormals, cached=compiled,
                      load_source=lambda: import_model(self.path,
                                                       input_shapes=self.input_shapes))

    def store(self, module: Module) -> None:
        """Remember the file's specialization (a model of static shapes has one, made by
        `Module`; it has a cache key when the cache took it)."""
        from slimc.frontends.onnx import model_files
        from slimc.runtime import cache

        if self.key is None or len(module._cache_keys) != 1:
            return
        (model_key,) = module._cache_keys.values()
        cache.store_by_file(self.key, model_key, model_files(self.path))
