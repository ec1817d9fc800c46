"""PyTorch's OpInfo samples through slimc.from_torch + slimc.compile, held to
tests/conformance/torch_opinfo_expected.txt (see torch_opinfo.py).

The quick test runs every float32 sample of a fixed set of entries (the frontend's main
families: elementwise, reductions, shapes and indexing, convolution, pooling, normalization,
linear algebra), in two worker processes, in about a minute. The slow one runs all of op_db
(about 18,800 samples; roughly 40 minutes on two cores) and checks the issue's figures.
After a change that moves samples, regenerate the list with
``python -m tests.conformance.torch_opinfo --write-expected`` and read the diff.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("torch.testing._internal.common_methods_invocations",
                    reason="PyTorch's OpInfo database (needs the expecttest package)")

from tests.conformance import torch_opinfo as T  # noqa: E402

WORKERS = 2  # CI has two cores

QUICK = [
    "abs", "add", "addmm", "amax", "argmax", "atan2", "bmm", "cat", "clamp", "cumsum",
    "div.floor_rounding", "div.no_rounding_mode", "exp", "expand", "flip", "gather",
    "index_put", "index_select", "log_softmax", "logsumexp", "masked_fill", "matmul", "mean",
    "mul", "nn.functional.avg_pool2d", "nn.functional.conv2d", "nn.functional.gelu",
    "nn.functional.layer_norm", "nn.functional.linear", "nn.functional.pad.constant",
    "nn.functional.relu", "permute", "reshape", "rsqrt", "scatter_add", "sigmoid", "softmax",
    "sum", "tanh", "topk", "transpose", "tril", "var", "where",
]


def _check(results: dict, wall: float, title: str, capsys) -> None:
    text = f"{title}\n{T.summary(results, wall)}"
    with capsys.disabled():
        print("\n" + text)
    bad = [f"{r['name']}: {r['status']}: {r['reason']}" for r in results.values()
           if r["status"] in ("wrong", "crash", "hang")]
    problems = T.check_against_expected(results, T.read_expected())
    if bad or problems:
        pytest.fail(text + "\n\n" + "\n".join(
            [f"{len(bad)} wrong answer(s), crash(es) or hang(s):"] + bad +
            [f"{len(problems)} sample(s) differ from torch_opinfo_expected.txt:"] + problems),
            pytrace=False)


def test_expected_file_names_real_samples():
    """Every line of the expected-failures file names an entry of op_db (a sample index
    within its samples is checked by the runs: a listed sample that passes fails them)."""
    entries = T.op_entries()
    listed = {name.rsplit("#", 1)[0] for name in T.read_expected()}
    assert listed, "torch_opinfo_expected.txt lists nothing"
    assert not listed - set(entries), sorted(listed - set(entries))[:10]


def test_opinfo_quick(capsys):
    cases = T.discover(entries=QUICK)
    assert len(cases) > 200
    results, wall = T.run_cases(cases, workers=WORKERS)
    assert set(results) == {c.name for c in cases}
    _check(results, wall, f"OpInfo conformance, {len(QUICK)} entries", capsys)


@pytest.mark.slow
def test_opinfo_full(capsys):
    cases = T.discover()
    results, wall = T.run_cases(cases, workers=WORKERS)
    _check(results, wall, "OpInfo conformance, all of op_db", capsys)
    c = T.counts(results)
    assert c["entries_all_passed"] >= 150 and c["passed"] >= 1500, c
    expected = T.read_expected()
    ran = {r["entry"] for r in results.values()}
    stale = [n for n in expected if n.rsplit("#", 1)[0] not in ran or
             (not n.endswith("#*") and n not in results)]
    assert not stale, f"listed but no such sample: {stale[:10]}"
