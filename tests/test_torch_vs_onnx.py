"""A corpus model through `from_torch` compiles to the same kernels as its ONNX export.

Both paths end in the same passes, so after optimization the kernels should do the same work.
The one difference allowed is in index remapping (reshape, transpose, squeeze, ...: the CPU
backend's index maps, computed inline in whichever kernel reads them): the dynamo ONNX
exporter leaves chains such as reshape-transpose-reshape-transpose-reshape around attention
heads where the ATen graph has one reshape and one transpose. Measured on bert_small: 31
kernels either way, two of which differ only so.
"""

from __future__ import annotations

import collections

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import slimc  # noqa: E402
from slimc.codegen.cpu.kernel import INDEX_MAPS  # noqa: E402

from .test_frontend_torch_models import NAMED, build  # noqa: E402

QUICK = {"resnet18_small", "bert_small"}


def _work(kernels) -> collections.Counter:
    """Each kernel as the ops that compute something (index maps left out)."""
    return collections.Counter(tuple(op for op in k.ops if op not in INDEX_MAPS)
                               for k in kernels)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow)
                                  for n in NAMED])
def test_same_kernels_as_the_onnx_export(name, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    module, args = build(name)
    path = str(tmp_path / f"{name}.onnx")
    with torch.no_grad():
        torch.onnx.export(module, args, path, dynamo=True, external_data=False)
    from_onnx = slimc.compile(path)
    from_torch = slimc.compile(module, example_inputs=args)
    assert len(from_torch.kernels) == len(from_onnx.kernels), (
        [k.ops for k in from_torch.kernels], [k.ops for k in from_onnx.kernels])
    onnx_work, torch_work = _work(from_onnx.kernels), _work(from_torch.kernels)
    assert torch_work == onnx_work, (f"only through ONNX: {dict(onnx_work - torch_work)}; "
                                     f"only through torch: {dict(torch_work - onnx_work)}")
