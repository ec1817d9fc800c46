"""The command line: ``slimc ir``, ``slimc run``, ``slimc profile``, ``slimc compile``,
``slimc quantize``, ``slimc prune``, ``slimc opt``, ``slimc cache``, ``slimc demo``.

    slimc ir model.onnx [--after PASS] [--opt-level N] [--shape x=1,3,224,224]
    slimc run model.onnx [--inputs inputs.npz] [--shape ...]
    slimc profile model.onnx [--threads N] [--alone] [--top 20]   (time of every kernel)
    slimc compile model.onnx -o model.slimc [--target aarch64] [--shape ...] [--time]  (export)
    slimc quantize model.onnx --calibration inputs.npz [--dynamic] [--method entropy] -o out
                                                (writes out.slimc + out.npz, prints the report)
    slimc prune model.onnx --sparsity 0.9 [--pattern block:1x8] [--scope global] -o out
                                                (magnitude pruning; writes and prints as quantize)
    slimc opt graph.slimc --passes fold_constants,cse      (replays a pass on a dump)
    slimc cache [--clear]                       (the compile cache: its entries and size)
    slimc demo
"""

from __future__ import annotations

import argparse
import sys
import zipfile

import numpy as np


def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (a count such as --top or --repeat)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _target_name(text: str) -> str:
    """An argparse type: a target slimc knows (checked even where only a later pass would
    read it, so a typo is not silently ignored)."""
    from slimc.target import Target

    try:
        Target.of(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _load_npz(path: str, what: str) -> dict:
    """The arrays of the .npz at `path`; a missing, unreadable or pickled file is a one-line
    error naming it (never unpickled: allow_pickle=False)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except OSError as e:
        raise SystemExit(f"slimc: cannot read {what} {path}: {e.strerror or e}") from None
    except (ValueError, zipfile.BadZipFile):  # numpy takes a file not a zip for a pickle
        raise SystemExit(f"slimc: {what} {path} is not an .npz of plain arrays (what "
                         f"np.savez writes)") from None


def _shapes(specs) -> dict:
    out = {}
    for spec in specs or []:
        name, _, dims = spec.partition("=")
        out[name] = tuple(int(d) if d.lstrip("-").isdigit() else d for d in dims.split(",") if d)
    return out


def _load_graph(path: str, shapes: dict):
    import slimc

    if path.endswith(".slimc"):
        return slimc.ir.load(path)
    return slimc.from_onnx(path, input_shapes=shapes)


def _optimize(graph, opt_level: int, after=None, target: str = "x86"):
    from slimc.compiler import pipeline
    from slimc.passes import PassManager

    passes = pipeline(target, opt_level)
    if after:
        names = [p.name for p in passes]
        if after not in names:
            raise SystemExit(f"slimc: no pass {after!r} at -O{opt_level}; passes: {', '.join(names)}")
        passes = passes[:names.index(after) + 1]
    PassManager(passes).run(graph)
    return graph


def cmd_ir(args) -> int:
    graph = _load_graph(args.model, _shapes(args.shape))
    if args.after or args.opt_level is not None:
        _optimize(graph, 2 if args.opt_level is None else args.opt_level, args.after,
                  args.target)
    sys.stdout.write(str(graph))
    return 0


def _inputs_for(graph, path) -> list:
    """The arrays named like the graph's inputs in the .npz at `path`, the rest random (a
    fixed seed): standard normal floats, integers in [0, 4)."""
    rng = np.random.default_rng(0)
    arrays = []
    given = _load_npz(path, "--inputs") if path else {}
    names = [v.name for v in graph.inputs]
    unmatched = sorted(set(given) - set(names))
    if unmatched:
        raise SystemExit(f"slimc: {path} holds {unmatched}, which name no input of the model; "
                         f"its inputs are {names}")
    for v in graph.inputs:
        if v.name in given:
            arrays.append(given[v.name])
            continue
        if not v.type.is_static:
            raise SystemExit(f"slimc: input {v.name!r} has type {v.type}; give its shape with "
                             f"--shape {v.name}=...")
        if v.type.dtype.is_float:
            arrays.append(rng.standard_normal(v.type.shape).astype(v.type.dtype.numpy))
        else:
            arrays.append(rng.integers(0, 4, v.type.shape).astype(v.type.dtype.numpy))
    return arrays


def cmd_run(args) -> int:
    import slimc

    graph = _load_graph(args.model, _shapes(args.shape))
    _optimize(graph, args.opt_level)
    outs = slimc.interpret(graph, *_inputs_for(graph, args.inputs))
    for v, o in zip(graph.outputs, outs):
        print(f"{v.name}: {o.dtype}{list(o.shape)}")
        print(np.array2string(o, threshold=20, edgeitems=3))
    return 0


def cmd_profile(args) -> int:
    """Compile for this machine and print the time of every kernel, then by kind."""
    import slimc

    graph = _load_graph(args.model, _shapes(args.shape))
    mod = slimc.compile(graph, opt_level=args.opt_level, threads=args.threads)
    prof = mod.profile(*_inputs_for(graph, args.inputs), repeat=args.repeat, alone=args.alone)
    lines = str(prof).splitlines()
    print("\n".join(lines if args.top is None else lines[:args.top + 1] + lines[-1:]))
    total = sum(ms for _, _, ms in prof.rows) or 1.0
    print("\nby kind of kernel:")
    for ops, n, ms in prof.kinds():
        print(f"{ms:9.3f} ms {100 * ms / total:5.1f}%  {n:3d} x {ops}")
    return 0


def cmd_compile(args) -> int:
    """Compile for a target and export the artifact: the way to get an AArch64 library."""
    import os

    import slimc

    if args.time and not args.model.endswith(".slimc"):
        mod = slimc.compile(args.model, target=args.target, opt_level=args.opt_level,
                            threads=args.threads, input_shapes=_shapes(args.shape) or None)
    else:
        graph = _load_graph(args.model, _shapes(args.shape))
        mod = slimc.compile(graph, target=args.target, opt_level=args.opt_level,
                            threads=args.threads)
    mod.export(args.output)
    if args.time:
        times = mod.compile_times
        total = sum(times.values()) or 1.0
        print(f"{'stage':<14} {'seconds':>8} {'share':>6}")
        for stage, s in times.items():
            print(f"{stage:<14} {s:>8.3f} {100 * s / total:>5.1f}%")
        print(f"{'total':<14} {total:>8.3f}")
        _print_compile_details(mod._current())
    if mod.target.kind == "cuda":
        _print_ptxas(mod)
    print(f"slimc: compiled {args.model} for {args.target}; wrote {args.output}/: "
          f"{', '.join(sorted(os.listdir(args.output)))}")
    return 0


def _print_ptxas(mod) -> None:
    """A GPU module: what ptxas says of its kernels (when it is installed)."""
    from slimc.codegen.cuda.ptx import ptxas, ptxas_path

    if ptxas_path() is None:
        print("ptxas: not installed (pip install nvidia-cuda-nvcc) - the PTX was not assembled")
        return
    arch = mod.target.backend.target.cpu
    report = ptxas(mod.ptx, arch)
    regs = max((k.get("registers", 0) for k in report.kernels.values()), default=0)
    shared = max((k.get("shared", 0) for k in report.kernels.values()), default=0)
    spills = report.spills()
    print(f"ptxas -arch={arch}: {len(report.kernels)} kernels assembled, at most {regs} "
          f"registers and {shared} bytes of shared memory a kernel; "
          f"{'spills in ' + ', '.join(sorted(spills)) if spills else 'no spills'}")


def _print_compile_details(compiled, top: int = 8) -> None:
    """`--time`, per kernel and per LLVM part: the kernels that took longest to generate, and
    each part's size and seconds (the parts compile in parallel, so their seconds add up to
    more than the stages' wall time)."""
    executable = getattr(compiled, "executable", None)
    if executable is None:
        print("(loaded from the compile cache: SLIMC_CACHE_DIR=off for a cold compile)")
        return
    kernels = sorted(compiled.kernels, key=lambda k: -k.codegen_seconds)
    print(f"\nslowest kernels to generate (of {len(kernels)}):")
    for k in kernels[:top]:
        print(f"  {k.codegen_seconds:7.3f} s  {k.name}  ({' '.join(k.ops)})")
    parts = getattr(executable, "parts", [])
    if parts:
        print("LLVM parts:")
    for i, (pipeline, functions, size, seconds) in enumerate(parts):
        how = (f"optimize {seconds[0]:.3f} s, machine code {seconds[1]:.3f} s" if seconds
               else "from the part cache")
        print(f"  part {i + 1}: {pipeline:<6} {len(functions):4d} functions {size / 1e3:7.0f} KB "
              f"of IR, {how}")


def _calibration_samples(graph, path: str) -> list:
    """The samples of a calibration .npz: arrays named like the graph's inputs, each either
    one sample (the input's rank) or a stack of samples along a new first axis."""
    arrays = _load_npz(path, "--calibration")
    missing = [v.name for v in graph.inputs if v.name not in arrays]
    if missing:
        raise SystemExit(f"slimc: {path} has no array for input(s) {missing}; it holds "
                         f"{sorted(arrays)}")
    stacked = {v.name: arrays[v.name].ndim == v.type.rank + 1 for v in graph.inputs}
    if not any(stacked.values()):
        return [tuple(arrays[v.name] for v in graph.inputs)]
    counts = {len(arrays[n]) for n, s in stacked.items() if s}
    if len(counts) != 1 or not all(stacked.values()):
        raise SystemExit(f"slimc: {path}: every input needs the same number of samples along "
                         f"a leading axis (or none), got shapes "
                         f"{ {n: list(a.shape) for n, a in arrays.items()} }")
    return [tuple(arrays[v.name][i] for v in graph.inputs) for i in range(counts.pop())]


def cmd_quantize(args) -> int:
    """Quantize to int8 and write the graph as slimc IR (OUT.slimc and its weights OUT.npz,
    which `slimc compile OUT.slimc` and `slimc.ir.load` read), printing the report."""
    import slimc
    from slimc.ir import save

    graph = _load_graph(args.model, _shapes(args.shape))
    samples = _calibration_samples(graph, args.calibration) if args.calibration else None
    qgraph, report = slimc.quantize(graph, samples, mode="dynamic" if args.dynamic else "static",
                                    method=args.method, percentile=args.percentile,
                                    per_channel=not args.per_tensor,
                                    exclude=args.exclude.split(",") if args.exclude else (),
                                    keep_sensitive=args.keep_sensitive, report=True)
    save(qgraph, args.output)
    print(report)
    base = args.output[:-len(".slimc")] if args.output.endswith(".slimc") else args.output
    print(f"slimc: wrote {base}.slimc and {base}.npz")
    return 0


def cmd_prune(args) -> int:
    """Magnitude-prune and write the graph as quantize does (OUT.slimc and OUT.npz), printing
    the report."""
    import slimc
    from slimc.ir import save

    graph = _load_graph(args.model, _shapes(args.shape))
    pruned, report = slimc.prune.magnitude(graph, args.sparsity, pattern=args.pattern,
                                           layers=args.layers.split(",") if args.layers else None,
                                           scope=args.scope, report=True)
    save(pruned, args.output)
    print(report)
    base = args.output[:-len(".slimc")] if args.output.endswith(".slimc") else args.output
    print(f"slimc: wrote {base}.slimc and {base}.npz")
    return 0


def cmd_opt(args) -> int:
    import slimc
    from slimc.compiler import pipeline
    from slimc.passes import PassManager, make_pass

    if args.graph.endswith(".onnx"):
        raise SystemExit(f"slimc: opt takes slimc IR (a .slimc file or a dump), not an ONNX "
                         f"model: print it first with `slimc ir {args.graph} > model.slimc`")
    with open(args.graph, "rb") as f:
        graph = slimc.parse(f.read())
    # a pass the target configures (winograd's cost model, layout's block) as compile does
    configured = {p.name: p for p in pipeline(args.target, 2)}
    passes = [configured.get(n) or make_pass(n) for n in args.passes.split(",") if n]
    PassManager(passes, verify=True).run(graph)
    sys.stdout.write(str(graph))
    return 0


def cmd_cache(args) -> int:
    from slimc.runtime import cache

    info = cache.summary()
    if info["folder"] is None:
        print("the compile cache is off (SLIMC_CACHE_DIR=off)")
        return 0
    if args.clear:
        print(f"cleared {info['folder']}: {cache.clear() / 1e6:.1f} MB freed")
        return 0
    print(f"{info['folder']}: {info['models']} compiled model(s), {info['parts']} compiled "
          f"part(s), {info['files']} model file(s), {info['bytes'] / 1e6:.1f} MB of "
          f"{info['limit'] / 1e6:.0f} MB "
          f"(SLIMC_CACHE_MAX; least recently used entries go first)")
    return 0


def cmd_demo(args) -> int:
    from .demo import main

    return main()


def main(argv=None) -> int:
    from slimc.ir import SlimcError

    parser = argparse.ArgumentParser(prog="slimc", description="slimc: a neural-network compiler")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ir", help="print a model's IR")
    p.add_argument("model")
    p.add_argument("--after", help="print after this pass of the pipeline")
    p.add_argument("--opt-level", type=int, help="run the -O pipeline first")
    p.add_argument("--shape", action="append", help="bind an input shape: name=1,3,224,224")
    p.add_argument("--target", default="x86", type=_target_name,
                   help="whose pipeline: x86 (default), aarch64, ...")
    p.set_defaults(fn=cmd_ir)
    p = sub.add_parser("run", help="run a model on random or given inputs")
    p.add_argument("model")
    p.add_argument("--inputs", help=".npz with arrays named like the inputs")
    p.add_argument("--opt-level", type=int, default=2)
    p.add_argument("--shape", action="append")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("profile", help="compile for this machine and time every kernel")
    p.add_argument("model")
    p.add_argument("--inputs", help=".npz with arrays named like the inputs (else random)")
    p.add_argument("--opt-level", type=int, default=2)
    p.add_argument("--threads", type=int, help="at most this many threads (default: all)")
    p.add_argument("--repeat", type=_positive_int, default=20,
                   help="calls to take the medians of")
    p.add_argument("--alone", action="store_true",
                   help="time each kernel run by itself (warm), not inside whole calls")
    p.add_argument("--top", type=_positive_int, help="print only the slowest N kernels")
    p.add_argument("--shape", action="append", help="bind an input shape: name=1,3,224,224")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("compile", help="compile a model and export it (any target, e.g. aarch64)")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="the artifact directory to write")
    p.add_argument("--target", default="x86", type=_target_name,
                   help="x86 (default), x86-64-v3, aarch64, ...")
    p.add_argument("--opt-level", type=int, default=2)
    p.add_argument("--threads", type=int, help="at most this many threads (default: all)")
    p.add_argument("--shape", action="append", help="bind an input shape: name=1,3,224,224")
    p.add_argument("--time", action="store_true",
                   help="print where the compile time went, stage by stage")
    p.set_defaults(fn=cmd_compile)
    p = sub.add_parser("quantize", help="quantize a model to int8 and write it as slimc IR")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="OUT: writes OUT.slimc and OUT.npz")
    p.add_argument("--calibration", help=".npz with arrays named like the inputs (a leading "
                   "axis of samples allowed); static mode needs it")
    p.add_argument("--dynamic", action="store_true",
                   help="quantize matmul/gemm activations per row at run time")
    p.add_argument("--method", default="percentile", choices=["minmax", "percentile", "entropy"])
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer")
    p.add_argument("--exclude", help="layers to keep float, by name: a,b,c")
    p.add_argument("--keep-sensitive", type=float, metavar="DB",
                   help="keep float the layers whose SQNR quantized alone is below DB")
    p.add_argument("--shape", action="append", help="bind an input shape: name=1,3,224,224")
    p.set_defaults(fn=cmd_quantize)
    p = sub.add_parser("prune", help="zero the smallest weights and write the model as slimc IR")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="OUT: writes OUT.slimc and OUT.npz")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of weights zeroed")
    p.add_argument("--pattern", default="unstructured",
                   help="unstructured (default), block:RxC (e.g. block:1x8) or n:m:N:M")
    p.add_argument("--scope", default="layer", choices=["layer", "global"],
                   help="one threshold per layer (default) or over all layers")
    p.add_argument("--layers", help="prune only these layers, by name: a,b,c")
    p.add_argument("--shape", action="append", help="bind an input shape: name=1,3,224,224")
    p.set_defaults(fn=cmd_prune)
    p = sub.add_parser("opt", help="run passes on a .slimc IR file and print the result")
    p.add_argument("graph")
    p.add_argument("--passes", required=True)
    p.add_argument("--target", default="x86", type=_target_name,
                   help="configures target passes (winograd, layout)")
    p.set_defaults(fn=cmd_opt)
    p = sub.add_parser("cache", help="show the compile cache (or --clear it)")
    p.add_argument("--clear", action="store_true", help="remove every entry")
    p.set_defaults(fn=cmd_cache)
    p = sub.add_parser("demo", help="build, import, optimize and run a small CNN")
    p.set_defaults(fn=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (SlimcError, OSError) as e:  # the model's or the file system's: one line, no trace
        print(f"slimc: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
