"""The ONNX backend conformance suite through slimc.compile(target="x86"), held to
tests/conformance/expected_failures.txt.

Every case runs in a worker process (tests/conformance/pool.py: spawn; 60 s of CPU per case,
300 for the whole-CNN 'real' cases, 4x that in wall time), so a crash or hang is that case's
result, not the run's. The strict rule: no crash, no hang, every case that does not pass is
listed, every listed case still fails, with the status listed. After a change that moves
cases, regenerate the list with `python -m tests.conformance --write-expected` and read the
diff.

The smoke test runs ~20 on-disk cases first (no node-case loading: seconds); the whole suite
then runs once per session (under xdist too: the first worker to need it runs it and the
others read its results through a file lock).
"""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from tests.conformance import cases as C
from tests.conformance.pool import run_cases

WORKERS = 2  # CI has two cores
TIMEOUT = 60.0  # CPU seconds per case, then 'hang' (the 'real' cases set 300)

SMOKE = [
    # simple
    "test_sign_model", "test_single_relu_model", "test_shrink", "test_expand_shape_model1",
    "test_gradient_of_add", "test_sequence_model1", "test_strnorm_model_monday_empty_output",
    # pytorch-operator
    "test_operator_add_broadcast", "test_operator_addmm", "test_operator_basic",
    "test_operator_clip", "test_operator_concat2", "test_operator_exp", "test_operator_flatten",
    "test_operator_mm", "test_operator_permute2", "test_operator_pow", "test_operator_reduced_mean",
    "test_operator_selu", "test_operator_sqrt",
    # pytorch-converted
    "test_Softmax", "test_Linear", "test_Conv2d",
]


def _env() -> dict:
    # The workers compile with the test settings (tests/conftest.py sets SLIMC_VERIFY=1).
    return {"SLIMC_VERIFY": os.environ.get("SLIMC_VERIFY", "1"), "SLIMC_CACHE_DIR": "off"}


def _problems(results: dict) -> list[str]:
    """The strict rule as readable lines; empty when the run matches expected_failures.txt."""
    lines = []
    for status in ("crash", "hang"):
        lines += [f"{status}: {r['name']}: {r['reason']}"
                  for r in sorted(results.values(), key=lambda r: r["name"]) if r["status"] == status]
    problems = C.check_against_expected(results, C.read_expected())
    titles = {"unexpected_failures": "not passing and not listed in expected_failures.txt",
              "unexpected_passes": "listed in expected_failures.txt but passes now (remove it)",
              "changed_status": "listed with another status"}
    for what, items in problems.items():
        lines += [f"{titles[what]}: {x}" for x in items]
    return lines


def _report(results: dict, wall: float, title: str) -> str:
    problems = _problems(results)
    text = f"{title}\n{C.summary(results, wall)}"
    if problems:
        text += (f"\n\n{len(problems)} problem(s) (after a deliberate change, regenerate with "
                 f"`python -m tests.conformance --write-expected` and read the diff):\n  " +
                 "\n  ".join(problems[:200]))
    return text


def _show(text: str, capsys) -> None:
    with capsys.disabled():
        print("\n" + text)


# ----- the pool itself: a crash or a hang is one case's result ----------------------------------

def _selftest_case(action: str) -> C.Case:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], action, [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    a = np.array([1.0, 2.0], np.float32)
    expected = a + 1 if action == "wrong" else a
    return C.Case(name=f"test_selftest_{action}", kind="node", model_bytes=model.SerializeToString(),
                  data_sets=[([a], [expected])], ops=("Identity",))


def test_pool_isolates_crash_and_hang():
    actions = ["pass", "crash", "pass2", "hang", "spin", "refuse", "raise", "wrong", "pass3"]
    cases = [_selftest_case(a) for a in actions]
    results, _ = run_cases(cases, runner="selftest", workers=2, timeout=2.0, wall_factor=3.0)
    got = {n[len("test_selftest_"):]: r["status"] for n, r in results.items()}
    assert got == {"pass": "passed", "pass2": "passed", "pass3": "passed", "crash": "crash",
                   "hang": "hang", "spin": "hang", "refuse": "refused", "raise": "errored",
                   "wrong": "failed"}, got
    assert "SIGSEGV" in results["test_selftest_crash"]["reason"]


# ----- smoke: a few on-disk cases, fast, first -------------------------------------------------

def test_conformance_smoke(capsys):
    cases = C.discover(kinds=("simple", "pytorch-operator", "pytorch-converted"),
                       name_filter="^(" + "|".join(SMOKE) + ")$")
    assert len(cases) >= 15, f"only {len(cases)} of the smoke cases exist in this onnx"
    results, wall = run_cases(cases, runner="compiled", workers=WORKERS, timeout=TIMEOUT,
                              env=_env())
    assert set(results) == {c.name for c in cases}
    text = _report(results, wall, "ONNX conformance smoke")
    _show(text, capsys)
    if _problems(results):
        pytest.fail(text, pytrace=False)


# ----- the whole suite, once per session ---------------------------------------------------------

def _run_all() -> dict:
    results, wall = run_cases(C.discover, runner="compiled", workers=WORKERS, timeout=TIMEOUT,
                              env=_env())
    return dict(results=results, wall=wall)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _run_all()
    # xdist may hand this module's tests to several workers: run once, share through a file.
    shared = tmp_path_factory.getbasetemp().parent
    out = shared / "onnx_conformance.json"
    with open(shared / "onnx_conformance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if out.exists():
                return json.loads(out.read_text())
            data = _run_all()
            out.write_text(json.dumps(data))
            return data
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_conformance_summary(suite, capsys):
    results = suite["results"]
    _show(_report(results, suite["wall"], "ONNX backend conformance (compiled, x86)"), capsys)
    names = {c.name for c in C.discover()}
    missing, extra = sorted(names - set(results)), sorted(set(results) - names)
    assert not missing and not extra, (f"{len(missing)} cases of the onnx wheel have no "
                                       f"result ({missing[:5]}), {len(extra)} results name no "
                                       f"case ({extra[:5]})")
    listed = set(C.read_expected()) & names
    passed = sum(r["status"] == "passed" for r in results.values())
    assert passed == len(names) - len(listed), \
        f"{passed} of {len(names)} cases pass, but expected_failures.txt lists {len(listed)}"


def test_conformance_no_crash_or_hang(suite):
    bad = [f"{r['name']}: {r['status']}: {r['reason']}"
           for r in sorted(suite["results"].values(), key=lambda r: r["name"])
           if r["status"] in ("crash", "hang")]
    if bad:
        pytest.fail(f"{len(bad)} case(s) crashed or hung (slimc bugs):\n  " + "\n  ".join(bad),
                    pytrace=False)


def test_conformance_failures_are_listed(suite):
    problems = C.check_against_expected(suite["results"], C.read_expected())
    bad = problems["unexpected_failures"] + problems["changed_status"]
    if bad:
        pytest.fail(f"{len(bad)} case(s) not passing as expected_failures.txt says (a regression, "
                    f"or run `python -m tests.conformance --write-expected` and read the diff):"
                    "\n  " + "\n  ".join(bad), pytrace=False)


def test_conformance_listed_cases_still_fail(suite):
    expected = C.read_expected()
    problems = C.check_against_expected(suite["results"], expected)
    gone = sorted(set(expected) - set(suite["results"]))
    bad = problems["unexpected_passes"] + [f"{n}: listed but no such case" for n in gone]
    if bad:
        pytest.fail(f"{len(bad)} listed case(s) pass now or do not exist: remove them from "
                    "tests/conformance/expected_failures.txt:\n  " + "\n  ".join(bad),
                    pytrace=False)
