"""PyTorch's OpInfo samples through slimc: the PyTorch frontend's conformance suite.

``torch.testing._internal.common_methods_invocations.op_db`` describes each PyTorch operator
(an OpInfo entry: name and variant) with sample inputs PyTorch's own tests use. Every float32
CPU sample of every entry becomes a tiny ``nn.Module`` (the sample's tensors are its inputs,
everything else is baked in), goes through ``slimc.from_torch`` + ``slimc.compile`` and is
compared with eager PyTorch: same output count, shapes and dtypes, values within rtol 1e-3 /
atol 1e-4, NaN in the same places. This plays for the PyTorch frontend the role the ONNX
backend suite plays for the ONNX one.

A sample's status is one of `STATUSES`:

* ``passed``;
* ``wrong``: slimc ran and disagreed with PyTorch (a bug, never an accepted limitation);
* ``refused``: slimc declined with a clean error (an unsupported op, dtype or argument);
* ``export``: torch.export itself could not capture the sample (not slimc's doing);
* ``errored``: slimc failed otherwise (an InternalError, a verifier error, a Python exception);
* ``crash`` / ``hang``: the worker process died, or the sample used `TIMEOUT` s of CPU;
* ``skipped``: nothing to compare (eager PyTorch fails on the sample, returns no tensor, or
  returns values that are undefined: ``torch.empty``).

Each sample runs in a worker process (spawned, never forked; a crash or a hang costs one
sample). Samples are drawn afresh in each worker from a seed per entry, so a case is just
"entry #index". `EXPECTED_FILE` lists every sample that does not pass with its status;
``tests/test_torch_opinfo.py`` holds the suite to it. Run from the repository root::

    python -m tests.conformance.torch_opinfo [--filter REGEX] [-j 2] [--write-expected]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Iterable, Optional

STATUSES = ("passed", "wrong", "refused", "export", "errored", "crash", "hang", "skipped")
RTOL, ATOL = 1e-3, 1e-4
TIMEOUT = 60.0  # CPU seconds per sample
EXPECTED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "torch_opinfo_expected.txt")
# Outputs whose values PyTorch leaves undefined: only shapes and dtypes are compared.
UNDEFINED_VALUES = re.compile(r"^(empty|empty_like|empty_strided|empty_permuted|new_empty|"
                              r"new_empty_strided)(\.|$)")
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "SLIMC_CACHE_DIR": "off", "SLIMC_VERIFY": "1"}


# ----- entries and samples -----------------------------------------------------------------

def entry_key(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def op_entries() -> dict:
    """key -> OpInfo, for every entry of op_db that takes float32 on the CPU."""
    import torch
    from torch.testing._internal.common_methods_invocations import op_db

    return {entry_key(op): op for op in op_db if torch.float32 in op.supported_dtypes("cpu")}


def samples(op) -> list:
    """The entry's float32 CPU samples, drawn from a seed of its own (the same list in every
    process)."""
    import random

    import numpy as np
    import torch

    seed = zlib.crc32(entry_key(op).encode())
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(op.sample_inputs("cpu", torch.float32, requires_grad=False))


@dataclass(frozen=True)
class Case:
    entry: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.entry}#{self.index}"


def discover(name_filter: Optional[str] = None, entries: Optional[Iterable[str]] = None,
             limit: Optional[int] = None) -> list[Case]:
    """Every sample of the selected entries (all by default), `limit` per entry if given."""
    ops = op_entries()
    keys = sorted(ops) if entries is None else list(entries)
    unknown = [k for k in keys if k not in ops]
    if unknown:
        raise KeyError(f"no OpInfo entry {unknown} (float32, CPU)")
    cases = []
    for key in keys:
        if name_filter and not re.search(name_filter, key):
            continue
        n = len(samples(ops[key]))
        cases += [Case(key, i) for i in range(n if limit is None else min(n, limit))]
    return cases


# ----- one sample ------------------------------------------------------------------------

def sample_module(op, sample):
    """(module, tensor inputs): the sample's call as a module whose forward takes the tensors
    of (input, args, kwargs) and returns the tensors of the result, flattened."""
    import torch
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten((sample.input, tuple(sample.args), dict(sample.kwargs)))
    where = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    fn = op.op

    class Sample(torch.nn.Module):
        def forward(self, *tensors):
            filled = list(leaves)
            for i, t in zip(where, tensors):
                filled[i] = t
            inp, args, kwargs = pytree.tree_unflatten(filled, spec)
            out = fn(inp, *args, **kwargs)
            return tuple(x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor))

    return Sample().eval(), tuple(leaves[i].detach().clone() for i in where)


def compare(expected: list, got: list) -> Optional[str]:
    """Why `got` differs from `expected` (None: it agrees)."""
    import numpy as np

    if len(got) != len(expected):
        return f"{len(got)} outputs, PyTorch gives {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        g = np.asarray(g)
        if g.shape != e.shape or g.dtype != e.dtype:
            return f"output {i}: {g.dtype}{list(g.shape)}, PyTorch gives {e.dtype}{list(e.shape)}"
        if e.dtype.kind in "biu":
            bad = np.flatnonzero((g != e).reshape(-1))
        else:
            e64, g64 = e.astype(np.float64), g.astype(np.float64)
            close = np.isclose(g64, e64, rtol=RTOL, atol=ATOL, equal_nan=True)
            bad = np.flatnonzero(~close.reshape(-1))
        if bad.size:
            j = bad[0]
            return (f"output {i}: {bad.size} of {e.size} elements differ, first at flat index "
                    f"{j}: {g.reshape(-1)[j]!r}, PyTorch gives {e.reshape(-1)[j]!r}")
    return None


def _eager(module, inputs) -> list:
    import torch

    with torch.no_grad():
        return [t.detach().contiguous().numpy() for t in module(*[t.clone() for t in inputs])]


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if text.endswith(":") and len(lines) > 1:
        text += " " + "; ".join(lines[1:4])
    return " ".join(text.split())[:240]


def run_sample(op, sample, key: str = "") -> tuple[str, str]:
    """(status, reason) of one sample."""
    import slimc
    from slimc.ir.errors import InternalError, VerificationError

    module, inputs = sample_module(op, sample)
    try:
        expected = _eager(module, inputs)
    except Exception as e:  # noqa: BLE001 - the sample is not valid in eager PyTorch
        return "skipped", f"eager PyTorch fails: {type(e).__name__}: {_one_line(e)}"
    if not expected:
        return "skipped", "the op returns no tensor"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = slimc.compile(module, example_inputs=inputs, threads=1)
            got = compiled(*[t.contiguous().numpy() for t in inputs])
    except (InternalError, VerificationError) as e:
        return "errored", f"{type(e).__name__}: {_one_line(e)}"
    except slimc.SlimcError as e:
        if str(e).startswith("torch.export could not capture"):
            return "export", _one_line(e).replace("torch.export could not capture the module: ",
                                                  "")
        return "refused", _one_line(e)
    except Exception as e:  # noqa: BLE001
        return "errored", f"{type(e).__name__}: {_one_line(e)}"
    if UNDEFINED_VALUES.match(key):  # compare shapes and dtypes only
        import numpy as np

        expected, got = [np.zeros_like(e) for e in expected], [np.zeros_like(g) for g in got]
    why = compare(expected, got)
    return ("wrong", why) if why else ("passed", "")


# ----- the worker pool -------------------------------------------------------------------

def _worker(conn, env: dict) -> None:
    import logging

    from tests.conformance.pool import serve

    os.environ.update(env)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # torch.export's messages print whole graphs
    import torch

    torch.set_num_threads(1)
    import slimc  # noqa: F401  (before 'ready': the timeout is the sample's own time)

    ops = op_entries()
    cached: list = ["", []]  # the entry whose samples were drawn last, and its samples

    def handle(case):
        t0 = time.perf_counter()
        if cached[0] != case.entry:
            cached[:] = [case.entry, samples(ops[case.entry])]
        status, reason = run_sample(ops[case.entry], cached[1][case.index], case.entry)
        return dict(name=case.name, status=status, reason=reason,
                    seconds=round(time.perf_counter() - t0, 3))

    serve(conn, handle)


def run_cases(cases: list, workers: int = 2, timeout: float = TIMEOUT, progress: bool = False,
              wall_factor: float = 4.0) -> tuple[dict, float]:
    """{case name: result} and the wall seconds, through the ONNX suite's pool (pool.py): a
    sample that kills its worker is a ``crash``; one past `timeout` s of CPU (or
    `wall_factor` times that in wall time, for a deadlock) is a ``hang``; either way its
    worker is replaced and the run goes on."""
    from tests.conformance.pool import Pool

    env = {**WORKER_ENV, "PYTHONWARNINGS": "ignore"}
    done, t0 = [0], time.monotonic()

    def tick(_res):
        done[0] += 1
        if progress and (done[0] % 500 == 0 or done[0] == len(cases)):
            print(f"  ... {done[0]}/{len(cases)} samples, {time.monotonic() - t0:.0f} s",
                  file=sys.stderr, flush=True)

    with Pool(workers=workers, timeout=timeout, wall_factor=wall_factor, worker=_worker,
              worker_args=(env,)) as pool:
        raw = pool.run(cases, on_result=tick)
    results = {name: dict(name=name, entry=name.rsplit("#", 1)[0], status=r["status"],
                          reason=r["reason"], seconds=r["seconds"]) for name, r in raw.items()}
    return results, time.monotonic() - t0


# ----- expectations ----------------------------------------------------------------------

_HEADER = """\
# PyTorch OpInfo conformance (torch {torch}): every float32 CPU sample of op_db that does not
# pass through slimc.from_torch + slimc.compile, against eager PyTorch (rtol 1e-3, atol 1e-4).
#   entry#index  # status: reason      one sample
#   entry#*      # status: reason      every sample of the entry has this status (the reason
#                                      is the most common one)
# status: refused (a clean slimc refusal), export (torch.export cannot capture the sample),
# skipped (nothing to compare: eager fails, no tensor output), errored (a slimc bug), wrong
# (a WRONG ANSWER), crash, hang. tests/test_torch_opinfo.py is strict: a listed
# sample that passes, an unlisted one that does not, or another status fails it.
# Regenerate with `python -m tests.conformance.torch_opinfo --write-expected`; READ the diff.
"""


def read_expected(path: str = EXPECTED_FILE) -> dict:
    """{"entry#index" or "entry#*": (status, reason)}."""
    from tests.conformance.cases import read_listing

    out = read_listing(path, r"\S+#(\d+|\*)", sep="  # ", statuses=STATUSES)
    bad = [name for name, (status, _) in out.items() if status is None]
    if bad:
        raise ValueError(f"{path}: no known status ({', '.join(STATUSES)}) for {bad[:5]}")
    return {name: (status, reason.split(":", 1)[1].strip() if ":" in reason else "")
            for name, (status, reason) in out.items()}


def expected_for(expected: dict, name: str) -> Optional[str]:
    """The status `expected` lists for sample `name` (None: it should pass)."""
    entry = name.rsplit("#", 1)[0]
    hit = expected.get(name) or expected.get(f"{entry}#*")
    return hit[0] if hit else None


def check_against_expected(results: dict, expected: dict) -> list[str]:
    """The strict rule as readable lines (empty: the run matches `expected`), for the samples
    that ran: every sample that does not pass is listed with its status, none that passes."""
    lines = []
    for name, r in sorted(results.items()):
        want = expected_for(expected, name)
        if r["status"] == "passed" and want:
            lines.append(f"listed as {want} but passes now: {name}")
        elif r["status"] != "passed" and want != r["status"]:
            lines.append(f"{r['status']} but listed as {want or 'passing'}: {name}: "
                         f"{r['reason']}")
    return lines


def write_expected(results: dict, path: str = EXPECTED_FILE) -> int:
    """Rewrite `path` from a full run: one ``entry#*`` line where every sample of an entry has
    the same status, one line per sample otherwise. Returns the number of lines."""
    import torch

    by_entry = collections.defaultdict(list)
    for r in results.values():
        by_entry[r["entry"]].append(r)
    lines, wrong = [], []
    for entry in sorted(by_entry):
        rs = sorted(by_entry[entry], key=lambda r: int(r["name"].rsplit("#", 1)[1]))
        statuses = {r["status"] for r in rs}
        if len(statuses) == 1 and "passed" not in statuses:
            reason = collections.Counter(r["reason"] for r in rs).most_common(1)[0][0]
            lines.append(_line(f"{entry}#*", rs[0]["status"], reason))
        else:
            lines += [_line(r["name"], r["status"], r["reason"]) for r in rs
                      if r["status"] != "passed"]
        wrong += [r["name"] for r in rs if r["status"] in ("wrong", "crash", "hang")]
    with open(path, "w") as f:
        f.write(_HEADER.format(torch=torch.__version__.split("+")[0]))
        if wrong:
            f.write(f"#\n# !!! {len(wrong)} WRONG ANSWER(S), CRASH(ES) OR HANG(S): "
                    f"{', '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''}\n")
        f.write("\n" + "\n".join(lines) + "\n")
    return len(lines)


def _line(name: str, status: str, reason: str) -> str:
    if status == "wrong":
        reason = "!!! WRONG ANSWER: a bug, listed only to keep the suite green !!! " + reason
    return f"{name}  # {status}: {' '.join((reason or '(no message)').split())}"[:300]


# ----- reports ---------------------------------------------------------------------------

def counts(results: dict) -> dict:
    """The figures the README gives: entries run, entries with every sample passing, and
    samples per status."""
    by_entry = collections.defaultdict(set)
    for r in results.values():
        by_entry[r["entry"]].add(r["status"])
    per_status = collections.Counter(r["status"] for r in results.values())
    return dict(entries=len(by_entry), samples=len(results),
                entries_all_passed=sum(s == {"passed"} for s in by_entry.values()),
                entries_some_passed=sum("passed" in s for s in by_entry.values()),
                **{s: per_status[s] for s in STATUSES})


def _group(reason: str) -> str:
    key = re.sub(r"\(tests/conformance/[^)]*\)", "", reason)
    key = re.sub(r"'[^']*'", "'…'", key)
    key = re.sub(r"\b\d+\b", "N", key)
    return re.sub(r"\[[^\]]*\]", "[…]", key)[:150]


def summary(results: dict, wall: Optional[float] = None, top: int = 15) -> str:
    c = counts(results)
    lines = [f"{c['entries']} OpInfo entries, {c['samples']} float32 samples"
             + (f" in {wall:.0f} s" if wall is not None else "") + ": "
             + ", ".join(f"{c[s]} {s}" for s in STATUSES),
             f"entries with every sample passing: {c['entries_all_passed']}; with some: "
             f"{c['entries_some_passed']}"]
    for status in ("refused", "export", "errored", "skipped"):
        groups = collections.Counter(_group(r["reason"]) for r in results.values()
                                     if r["status"] == status)
        if groups:
            lines.append(f"top {status} reasons ({c[status]} samples):")
            lines += [f"  {n:5d}  {k}" for k, n in groups.most_common(top)]
    for status in ("wrong", "crash", "hang"):
        bad = sorted((r for r in results.values() if r["status"] == status),
                     key=lambda r: r["name"])
        if bad:
            lines.append(f"{status.upper()} ({len(bad)}):")
            lines += [f"  {r['name']}: {r['reason'][:250]}" for r in bad[:100]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.conformance.torch_opinfo",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", help="regex searched in entry names")
    ap.add_argument("--workers", "-j", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help="CPU seconds per sample")
    ap.add_argument("--limit", type=int, help="at most this many samples per entry")
    ap.add_argument("--write-expected", action="store_true",
                    help="rewrite the expected-failures file (a full run only)")
    ap.add_argument("--json", help="write every sample's result to this file")
    args = ap.parse_args(argv)
    if args.write_expected and (args.filter or args.limit):
        ap.error("--write-expected needs a full run (no --filter, --limit)")
    cases = discover(args.filter, limit=args.limit)
    print(f"{len(cases)} samples, {args.workers} workers, timeout {args.timeout:g} s",
          flush=True)
    results, wall = run_cases(cases, args.workers, args.timeout, progress=True)
    print(summary(results, wall))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(dict(seconds=round(wall, 1), counts=counts(results),
                           samples=sorted(results.values(), key=lambda r: r["name"])), f,
                      indent=1)
    if args.write_expected:
        print(f"wrote {write_expected(results)} lines to {os.path.relpath(EXPECTED_FILE)}")
        return 0
    problems = check_against_expected(results, read_expected())
    if problems:
        print(f"\n{len(problems)} sample(s) differ from {os.path.relpath(EXPECTED_FILE)}:")
        print("\n".join("  " + p for p in problems[:60]))
    return 1 if problems else 0


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.conformance import torch_opinfo  # workers unpickle cases from this name

    sys.exit(torch_opinfo.main())
