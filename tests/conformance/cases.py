"""ONNX backend test cases: discovery, loading, running one case, and onnx's comparison rule.

Cases, as `onnx.backend.test.runner.Runner` builds them for onnx 1.23:

* ``node``: built in memory by ``onnx.backend.test.loader.load_model_tests(kind="node")`` (the
  wheel has no on-disk node folder); a few draw random inputs, so numpy is seeded first.
* ``simple``, ``pytorch-converted``, ``pytorch-operator``: folders in the wheel with
  ``model.onnx`` and ``test_data_set_*/{input,output}_*.pb``, each typed by the graph's
  declared input/output types.
* ``real``: a ``data.json`` whose url names a wheel-local ``light/`` model; its input is
  ``arange(n) / n`` in float32 and its expected output is ``light_<name>_output_<i>.pb`` beside
  the model, exactly as the onnx runner's dummy-input path. An http url would need a download:
  such a case is skipped (none in onnx 1.23).

Comparison (`assert_similar`) is ``Runner.assert_similar_outputs``: output count, shapes,
dtypes, then ``assert_allclose(rtol, atol)``; bfloat16 outputs are compared in float32 with
``rtol >= 2**-6``. Tolerances: 1e-3 / 1e-7 unless the case's ``data.json`` says otherwise, plus
the per-test overrides onnx's own CI passes (``TOL_OVERRIDES``).

A case's outcome is one of STATUSES: passed, failed (a wrong answer: shape, dtype or values),
refused (slimc raised a clean `SlimcError`: unsupported op or dtype, bad model), errored (any
other exception, including slimc's `InternalError` / `VerificationError`, which are bugs),
crash (the worker process died) and hang (it ran past the per-case timeout); the last two are
decided by `pool.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np

STATUSES = ("passed", "failed", "refused", "errored", "crash", "hang")
KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator", "real")
RTOL, ATOL = 1e-3, 1e-7
# The per-test tolerances onnx's own CI passes as BackendTest(test_kwargs=...) in
# onnx/test/test_backend_reference.py (the reference backend's run, Linux values).
TOL_OVERRIDES = [(r"^test_dft(_axis|_inverse)?(_opset19)?$", RTOL, 1e-6),
                 (r"^test_celu_bfloat16_expanded$", 1e-2, 1e-2)]


@dataclasses.dataclass
class Case:
    name: str
    kind: str
    rtol: float = RTOL
    atol: float = ATOL
    ops: tuple = ()
    model_path: Optional[str] = None  # on-disk cases (and 'real': the light model)
    case_dir: Optional[str] = None  # folder with test_data_set_*
    model_bytes: Optional[bytes] = None  # node cases: serialized in memory
    data_sets: Optional[list] = None  # node cases: [(inputs, outputs), ...]
    skip: Optional[str] = None
    timeout: Optional[float] = None  # seconds before 'hang'; None: the pool's default


# The 'real' cases are whole CNNs (ResNet-50, DenseNet-121, VGG-19...): compiling one takes tens
# of seconds, not the fraction of a second of a node case.
REAL_TIMEOUT = 300.0


def _wheel_data_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def _apply_overrides(case: Case) -> Case:
    for rx, rtol, atol in TOL_OVERRIDES:
        if re.search(rx, case.name):
            case.rtol, case.atol = rtol, atol
    return case


def _node_cases() -> list[Case]:
    from onnx.backend.test.loader import load_model_tests

    state = np.random.get_state()
    np.random.seed(0)  # some node cases draw random inputs: keep the data reproducible
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tests = load_model_tests(kind="node")
    finally:
        np.random.set_state(state)
    out = []
    for t in tests:
        ops = tuple(sorted({n.op_type for n in t.model.graph.node}))
        out.append(Case(name=t.name, kind="node", rtol=t.rtol, atol=t.atol, ops=ops,
                        model_bytes=t.model.SerializeToString(), data_sets=list(t.data_sets)))
    return out


def _disk_cases(kind: str) -> list[Case]:
    import onnx

    data_dir = _wheel_data_dir()
    kdir = os.path.join(data_dir, kind)
    out = []
    for name in sorted(os.listdir(kdir)) if os.path.isdir(kdir) else []:
        cdir = os.path.join(kdir, name)
        if not name.startswith("test_") or not os.path.isdir(cdir):
            continue
        meta = {}
        if os.path.exists(os.path.join(cdir, "data.json")):
            with open(os.path.join(cdir, "data.json")) as f:
                meta = json.load(f)
        case = Case(name=name, kind=kind, rtol=meta.get("rtol", RTOL), atol=meta.get("atol", ATOL),
                    case_dir=cdir)
        if os.path.exists(os.path.join(cdir, "model.onnx")):
            case.model_path = os.path.join(cdir, "model.onnx")
        else:
            url = meta.get("url", "")
            if url.startswith("onnx/backend/test/data/light/"):
                site = os.path.dirname(os.path.dirname(onnx.__file__))  # url is wheel-relative
                case.model_path = os.path.normpath(os.path.join(site, url))
                case.case_dir = None
                case.timeout = REAL_TIMEOUT
            else:
                case.skip = f"needs a download: {url or 'no url'}"
        if case.model_path and os.path.exists(case.model_path):
            graph = onnx.load(case.model_path, load_external_data=False).graph
            case.ops = tuple(sorted({n.op_type for n in graph.node}))
        elif case.model_path:
            case.skip = f"model file missing: {case.model_path}"
        out.append(case)
    return out


def discover(kinds: Sequence[str] = KINDS, name_filter: Optional[str] = None) -> list[Case]:
    """Every case of `kinds` whose name matches the regex `name_filter`, sorted by name.

    Loading the node cases builds all of them in memory (about 10 s of CPU), filter or not:
    onnx has no cheaper way to enumerate them.
    """
    cases: list[Case] = []
    for kind in kinds:
        cases += _node_cases() if kind == "node" else _disk_cases(kind)
    names: dict[str, str] = {}
    for c in cases:
        if c.name in names:  # names are the keys of expected_failures.txt: must be unique
            raise RuntimeError(f"case {c.name} is in both {names[c.name]} and {c.kind}")
        names[c.name] = c.kind
    rx = re.compile(name_filter) if name_filter else None
    return sorted((_apply_overrides(c) for c in cases if rx is None or rx.search(c.name)),
                  key=lambda c: c.name)


# ----- loading one case's data (in the worker) --------------------------------------------------

def _load_pb(path: str, type_proto):
    import onnx
    from onnx import numpy_helper as nh

    with open(path, "rb") as f:
        data = f.read()
    if type_proto.HasField("sequence_type"):
        return nh.to_list(onnx.SequenceProto.FromString(data))
    if type_proto.HasField("optional_type"):
        return nh.to_optional(onnx.OptionalProto.FromString(data))
    if type_proto.HasField("map_type"):
        return nh.to_dict(onnx.MapProto.FromString(data))
    return nh.to_array(onnx.TensorProto.FromString(data))


def _normalize(x):
    import onnx
    from onnx import numpy_helper as nh

    return nh.to_array(x) if isinstance(x, onnx.TensorProto) else x


def load(case: Case):
    """(model, [(inputs, expected_outputs), ...]) for one case."""
    import onnx

    if case.model_bytes is not None:
        model = onnx.ModelProto.FromString(case.model_bytes)
        return model, [([_normalize(x) for x in ins], [_normalize(x) for x in outs])
                       for ins, outs in case.data_sets]
    model = onnx.load(case.model_path)
    g = model.graph
    if case.case_dir is None:  # 'real': light model, dummy input as onnx's runner makes it
        inits, ins = {i.name for i in g.initializer}, []
        for vi in (v for v in g.input if v.name not in inits):
            if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise NotImplementedError(f"dummy data is float only; input {vi.name!r} is not")
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                          for d in vi.type.tensor_type.shape.dim)
            n = int(np.prod(shape))
            ins.append((np.arange(n).reshape(shape) / n).astype(np.float32))
        stem = os.path.splitext(case.model_path)[0]
        outs = [_load_pb(f"{stem}_output_{i}.pb", o.type) for i, o in enumerate(g.output)]
        return model, [(ins, outs)]
    sets = []
    for ddir in sorted(d for d in os.listdir(case.case_dir) if d.startswith("test_data_set")):
        path = os.path.join(case.case_dir, ddir)
        files = os.listdir(path)

        def read(prefix, vis):
            n = sum(f.startswith(prefix + "_") and f.endswith(".pb") for f in files)
            return [_load_pb(os.path.join(path, f"{prefix}_{i}.pb"), vis[i].type) for i in range(n)]

        sets.append((read("input", g.input), read("output", g.output)))
    return model, sets


# ----- comparison -------------------------------------------------------------------------------

def assert_similar(ref: Sequence[Any], out: Sequence[Any], rtol: float, atol: float) -> None:
    """onnx.backend.test.runner.Runner.assert_similar_outputs, with clearer messages.

    One deliberate difference: an empty optional (None) on both sides is equal (onnx's runner
    would call None.shape)."""
    np.testing.assert_equal(len(out), len(ref), err_msg="number of outputs")
    for i, (r, o) in enumerate(zip(ref, out)):
        if r is None or o is None:
            assert r is None and o is None, f"output {i}: optional presence differs"
        elif isinstance(r, (list, tuple)) or isinstance(o, (list, tuple)):
            assert isinstance(o, (list, tuple)) and isinstance(r, (list, tuple)), \
                f"output {i}: sequence expected {type(r).__name__}, got {type(o).__name__}"
            assert_similar(r, o, rtol, atol)
        else:
            o = np.asarray(o)
            np.testing.assert_array_equal(o.shape, r.shape, err_msg=f"output {i} has incorrect shape")
            if r.dtype == object:  # strings
                np.testing.assert_array_equal(o, r)
                continue
            np.testing.assert_equal(o.dtype, r.dtype, err_msg=f"output {i} dtype")
            rt = rtol
            if o.dtype.name == "bfloat16":  # numpy cannot promote bfloat16 with a Python float
                rt, o, r = max(rtol, 2 ** -6), o.astype(np.float32), r.astype(np.float32)
            np.testing.assert_allclose(o, r, rtol=rt, atol=atol, err_msg=f"output {i}")


# ----- runners ----------------------------------------------------------------------------------

def _compiled(model, inputs, **options):
    from slimc.testing import compiled_run

    return compiled_run(model, inputs, **options)


def _interpreter(model, inputs):
    from slimc.testing import interpreter_run

    return interpreter_run(model, inputs)


def _selftest(model, inputs):
    """A runner for testing the pool itself: the graph's name says what to do."""
    import signal

    what = model.graph.name
    if what == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "hang":  # no CPU used: caught by the wall-clock limit
        time.sleep(3600)
    if what == "spin":  # busy: caught by the CPU limit
        while True:
            pass
    if what == "refuse":
        from slimc.ir import UnsupportedError

        raise UnsupportedError("selftest refusal")
    if what == "raise":
        raise RuntimeError("selftest error")
    return list(inputs)


def get_runner(name: str, threads: Optional[int] = 1) -> Callable:
    """'compiled': slimc.compile(target="x86") via slimc.testing.compiled_run (one thread by
    default: conformance graphs are tiny, and workers already use every core);
    'interpreter': slimc's numpy reference interpreter; 'selftest': see `_selftest`."""
    if name == "compiled":
        return functools.partial(_compiled, target="x86", threads=threads)
    if name == "interpreter":
        return _interpreter
    if name == "selftest":
        return _selftest
    raise ValueError(f"unknown runner {name!r}: compiled or interpreter")


# ----- one case ---------------------------------------------------------------------------------

_NODE_PREFIX = re.compile(r"^(?:node '[^']*'|unnamed node) \(([^)]*)\): ")
_NODE_LIST = re.compile(r": \d+ node\(s\), first .*$")


def one_line(exc: BaseException) -> str:
    """A readable one-line reason: node names dropped, indented lists joined."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    head = _NODE_PREFIX.sub(r"\1: ", lines[0])
    rest = [_NODE_LIST.sub("", ln) for ln in lines[1:]]
    if head.endswith(":") and rest:
        text = head + " " + ", ".join(rest)
    else:
        text = head
    return " ".join(text.split())[:240]


def _failure_detail(exc: BaseException) -> str:
    """An assertion from numpy, condensed: which output, what differs, the largest error."""
    text = " ".join(str(exc).split())
    text = text.replace("Not equal to tolerance ", "")
    return text[:400]


def classify(exc: BaseException) -> str:
    from slimc.ir import SlimcError
    from slimc.ir.errors import InternalError, VerificationError

    if isinstance(exc, (InternalError, VerificationError)):
        return "errored"  # slimc's own bugs, even though they are SlimcErrors
    if isinstance(exc, SlimcError):
        return "refused"
    return "errored"


def run_case(runner: Callable, case: Case) -> dict:
    """Run and check one case; a dict with status, reason (one line) and seconds."""
    t0 = time.perf_counter()

    def result(status, reason="", error_type=""):
        return dict(name=case.name, kind=case.kind, status=status, reason=reason,
                    error_type=error_type, seconds=round(time.perf_counter() - t0, 3))

    if case.skip:
        return result("errored", f"cannot run: {case.skip}", "Skip")
    try:
        model, sets = load(case)
    except Exception as e:  # noqa: BLE001
        return result("errored", f"cannot load test data: {type(e).__name__}: {one_line(e)}",
                      type(e).__name__)
    for inputs, expected in sets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy RuntimeWarnings of edge-case tests
                outs = runner(model, inputs)
        except Exception as e:  # noqa: BLE001
            status = classify(e)
            prefix = "" if status == "refused" else f"{type(e).__name__}: "
            return result(status, prefix + one_line(e), type(e).__name__)
        try:
            assert_similar(expected, list(outs), case.rtol, case.atol)
        except Exception as e:  # noqa: BLE001
            return result("failed", _failure_detail(e), type(e).__name__)
    return result("passed")


def group_key(reason: str) -> str:
    """Reasons with names and numbers blanked, for the 'top reasons' table."""
    key = re.sub(r"'[^']*'", "'…'", reason)
    key = re.sub(r"%[\w.:/-]+", "%…", key)
    key = re.sub(r"\b\d+\b", "N", key)
    key = re.sub(r"\[[^\]]*\]", "[…]", key)
    return key[:160]


# ----- expectations and reports -----------------------------------------------------------------

EXPECTED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expected_failures.txt")
WRONG_ANSWER = "!!! WRONG ANSWER: a slimc bug, listed only to keep the suite green; fix it !!!"

_HEADER = """\
# ONNX backend conformance (onnx {onnx}): every case that does not pass through
# slimc.compile(target="x86"), one line each, sorted:   test_name  # status: reason
# status is refused (a clean SlimcError: unsupported op/dtype/...), errored (another exception:
# a slimc bug or a gap in slimc.testing), failed (a WRONG ANSWER) or crash/hang.
# tests/test_conformance.py is strict: a listed case that passes, an unlisted case that does
# not, or a case whose status differs from the one listed fails the tests.
# Regenerate with `python -m tests.conformance --write-expected`, then READ the diff: a
# 'failed' line is a wrong answer, never an accepted limitation.
"""


def read_listing(path: str, name_pattern: str, sep: str = "#",
                 statuses: tuple = STATUSES) -> dict:
    """{name: (status or None, reason)} from a strict expected-failures file: one
    `name<sep>status: reason` line per entry (`reason` keeps its status), blank lines and
    `#` comments skipped; a malformed or repeated name is an error naming the line."""
    out: dict = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition(sep)
            name, reason = name.strip(), reason.strip()
            if not re.fullmatch(name_pattern, name):
                raise ValueError(f"{path}:{n}: not `name{sep}status: reason`: {raw.rstrip()}")
            if name in out:
                raise ValueError(f"{path}:{n}: {name} is listed twice")
            status = reason.split(":", 1)[0].strip()
            out[name] = (status if status in statuses else None, reason)
    return out


def read_expected(path: str = EXPECTED_FILE) -> dict:
    """{name: (status or None, reason)} from expected_failures.txt."""
    return read_listing(path, r"test_\w+")


def expected_line(res: dict) -> str:
    reason = res["reason"] or "(no message)"
    if res["status"] == "failed":
        reason = f"{WRONG_ANSWER} {reason}"
    elif res["status"] in ("crash", "hang"):
        reason = f"!!! {res['status'].upper()}: a slimc bug; the tests fail on it even when listed !!! {reason}"
    return f"{res['name']}  # {res['status']}: {reason}"[:400]


def write_expected(results: dict, path: str = EXPECTED_FILE) -> int:
    import onnx

    bad = sorted((r for r in results.values() if r["status"] != "passed"), key=lambda r: r["name"])
    with open(path, "w") as f:
        f.write(_HEADER.format(onnx=onnx.__version__))
        for status, what in (("failed", "WRONG ANSWER(S)"), ("crash", "CRASH(ES)"), ("hang", "HANG(S)")):
            names = [r["name"] for r in bad if r["status"] == status]
            if names:
                f.write(f"#\n# !!! {len(names)} {what} below (status '{status}'): "
                        f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}\n")
        f.write("\n")
        for r in bad:
            f.write(expected_line(r) + "\n")
    return len(bad)


def check_against_expected(results: dict, expected: dict) -> dict:
    """The strict rule, as lists of problems: unexpected failures, unexpected passes, changed
    statuses (all for cases that ran; listed cases that did not run are not judged)."""
    unexpected, now_pass, changed = [], [], []
    for name, r in sorted(results.items()):
        if r["status"] == "passed":
            if name in expected:
                now_pass.append(name)
        elif name not in expected:
            unexpected.append(f"{name}: {r['status']}: {r['reason']}")
        elif expected[name][0] is not None and expected[name][0] != r["status"]:
            changed.append(f"{name}: listed as {expected[name][0]}, now {r['status']}: {r['reason']}")
    return dict(unexpected_failures=unexpected, unexpected_passes=now_pass, changed_status=changed)


def summary(results: dict, wall: Optional[float] = None, top: int = 15) -> str:
    import collections

    counts = collections.Counter(r["status"] for r in results.values())
    lines = [f"{len(results)} cases" + (f" in {wall:.0f} s" if wall is not None else "") + ": " +
             ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
    by_kind = collections.defaultdict(collections.Counter)
    for r in results.values():
        by_kind[r["kind"]][r["status"]] += 1
    lines.append(f"  {'folder':<20}" + "".join(f"{s:>9}" for s in STATUSES))
    for kind in sorted(by_kind):
        lines.append(f"  {kind:<20}" + "".join(f"{by_kind[kind][s]:>9}" for s in STATUSES))
    for status in ("refused", "errored"):
        groups = collections.Counter(group_key(r["reason"]) for r in results.values()
                                     if r["status"] == status)
        if groups:
            lines.append(f"top {status} reasons ({counts[status]} cases, {len(groups)} distinct):")
            lines += [f"  {n:5d}  {k}" for k, n in groups.most_common(top)]
    missing = collections.Counter()
    for r in results.values():
        m = re.match(r".*?(?:has no lowering for|does not support):\s*(.*)", r["reason"])
        if r["status"] == "refused" and m:
            for item in m.group(1).split(", "):
                missing[item.strip().rstrip(".")] += 1
    if missing:
        lines.append("ops/features named in 'not supported / no lowering' refusals (cases):")
        lines.append("  " + ", ".join(f"{k} {n}" for k, n in missing.most_common(40)))
    for status in ("failed", "crash", "hang"):
        bad = sorted((r for r in results.values() if r["status"] == status), key=lambda r: r["name"])
        if bad:
            what = "WRONG ANSWERS" if status == "failed" else status.upper()
            lines.append(f"{what} ({len(bad)}):")
            lines += [f"  {r['name']}: {r['reason'][:300]}" for r in bad]
    slow = sorted(results.values(), key=lambda r: -r.get("seconds", 0))[:5]
    lines.append("slowest: " + ", ".join(f"{r['name']} {r.get('seconds', 0):.1f}s" for r in slow))
    return "\n".join(lines)
