"""Export and load: bit-identical results, checksums, refusals, no llvmlite/onnx/pickle."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import slimc
from slimc.ir import parse

GRAPH = """# slimc-ir v1
graph @exp_model(%x: f32[64,300]) -> (f32[64,300], f32[64], f32[3]) {
  const %w: f32[300] = elided
  const %k: f32[3] = [1.0, 2.0, 3.0]
  %a = mul(%x, %w) : f32[64,300]
  %b = tanh(%a) : f32[64,300]
  %s = reduce_sum(%b) {axes=[1], keepdims=0} : f32[64]
  return %b, %s, %k
}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    g = parse(GRAPH)
    g.constants["w"].data = np.linspace(-2, 2, 300).astype(np.float32)
    mod = slimc.compile(g, threads=2)
    path = str(tmp_path_factory.mktemp("art") / "model.slimc")
    mod.export(path)
    return mod, path


def test_loaded_module_is_bit_identical(exported):
    mod, path = exported
    x = np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)
    loaded = slimc.load(path)
    for a, b in zip(mod(x), loaded(x)):
        np.testing.assert_array_equal(a, b)
    assert loaded(x=x)[2].tolist() == [1.0, 2.0, 3.0]
    # the library's own clock readings profile it (clock_gettime from libc)
    prof = loaded.profile(x, repeat=3)
    assert prof.in_call and [r[0] for r in prof.rows] == [k.name for k in mod.kernels]
    assert all(ms > 0 for _, _, ms in prof.rows) and prof.total_ms > 0


def test_library_needs_only_libc_libm_and_the_threading_runtime(exported):
    _, path = exported
    out = subprocess.run(["nm", "-D", "--undefined-only", os.path.join(path, "model.so")],
                         capture_output=True, text=True, check=True).stdout
    symbols = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    allowed_prefixes = ("GOMP_", "omp_", "__cxa_finalize", "_ITM_", "__gmon_start__")
    libm = {"tanhf", "expf", "logf", "erff", "powf", "sinf", "cosf", "fmodf", "log1pf", "expm1f"}
    libc = {"clock_gettime"}  # profile's clock (slimc_timed)
    strange = {s for s in symbols if not s.startswith(allowed_prefixes) and s not in libm | libc
               and not s.startswith(("mem", "__mem"))}
    assert not strange, f"unexpected undefined symbols: {sorted(strange)}"


def test_loading_uses_no_llvmlite_onnx_or_pickle(exported):
    _, path = exported
    code = ("import sys, pickle, numpy as np\n"
            "def refuse(*a, **k): raise AssertionError('something unpickled')\n"
            "pickle.load = pickle.loads = refuse; pickle.Unpickler = refuse\n"
            "import slimc\n"
            f"m = slimc.load({path!r})\n"
            "m(np.zeros((64, 300), np.float32))\n"
            "print([n for n in ('llvmlite', 'onnx') if n in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("victim", ["model.so", "weights.bin"])
def test_a_flipped_byte_is_refused(exported, tmp_path, victim):
    import shutil

    _, path = exported
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    f = copy / victim
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(slimc.SlimcError, match=f"{victim}.*checksum"):
        slimc.load(str(copy))


def test_newer_format_and_foreign_cpu_are_refused(exported, tmp_path):
    import shutil

    _, path = exported
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(slimc.SlimcError, match=r"format 99 is newer than the one this slimc reads \(1\)"):
        slimc.load(str(copy))
    m["format"] = 0
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(slimc.SlimcError, match=r"format 0 is older than the one this slimc reads \(1\)"):
        slimc.load(str(copy))
    m["format"] = 1
    m["target"]["features"] += ",+amx-tile,+avx512fp16"
    (copy / "manifest.json").write_text(json.dumps(m))
    flags = open("/proc/cpuinfo").read()
    if "amx_tile" in flags and "avx512_fp16" in flags:
        pytest.skip("this host has every feature")
    with pytest.raises(slimc.SlimcError, match="lacks"):
        slimc.load(str(copy))


def test_not_an_artifact():
    with pytest.raises(slimc.SlimcError, match="not a slimc artifact"):
        slimc.load("/tmp")
