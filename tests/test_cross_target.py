"""Cross-compiling for AArch64 (and the portable x86-64-v3 target).

An "aarch64" module cannot run on this x86-64 host, so these tests check what can be checked
here: the object (and shared library, when a cross linker exists) is an AArch64 ELF naming the
entry function, the assembly is NEON, calling refuses clearly, loading refuses clearly. Where
Debian's cross toolchain and qemu-user are installed (``apt-get install gcc-aarch64-linux-gnu
qemu-user``), the exported library is linked with a tiny C driver and run under qemu-aarch64,
and its outputs are compared with slimc's reference interpreter.
"""

import json
import os
import platform
import re
import shutil
import struct
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import slimc
from slimc.ir import parse
from slimc.testing import interpreter_run

EM_X86_64, EM_AARCH64 = 62, 183
ET_REL, ET_DYN = 1, 3
SHT_SYMTAB, SHT_DYNSYM = 2, 11
STB_GLOBAL, STT_FUNC = 1, 2

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="these tests cross-compile from an x86-64 host")

CROSS_CC = shutil.which(os.environ.get("SLIMC_CROSS_CC") or "aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64")
SYSROOT = "/usr/aarch64-linux-gnu"
needs_cross_cc = pytest.mark.skipif(CROSS_CC is None, reason="aarch64-linux-gnu-gcc not installed")
needs_qemu = pytest.mark.skipif(CROSS_CC is None or QEMU is None or not os.path.isdir(SYSROOT),
                                reason="needs aarch64-linux-gnu-gcc and qemu-aarch64")


# ----- models ---------------------------------------------------------------------------------

def _init(name, shape, seed):
    data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.3
    return numpy_helper.from_array(data, name)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp_model():
    """x[8,64] -> dense 128 + relu -> dense 10."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 10])],
                  [_init("w1", (64, 128), 1), _init("b1", (128,), 2), _init("w2", (128, 10), 3),
                   _init("b2", (10,), 4)])


def cnn_model():
    """x[1,3,32,32] -> conv 16 + relu -> maxpool -> conv 32 + relu -> global avg -> dense 10.
    Big enough that the convolutions run on several threads (GOMP_parallel)."""
    nodes = [helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                  [_init("c1w", (16, 3, 3, 3), 5), _init("c1b", (16,), 6),
                   _init("c2w", (32, 16, 3, 3), 7), _init("c2b", (32,), 8),
                   _init("fw", (10, 32), 9), _init("fb", (10,), 10)])


DENORMAL = """# slimc-ir v1
graph @d(%x: f32[64,1024]) -> (f32[64,1024]) {
  const %tiny: f32[] = [1e-20]
  %a = mul(%x, %tiny) : f32[64,1024]
  %b = mul(%a, %tiny) : f32[64,1024]
  return %b
}
"""


MODELS = {"mlp": (mlp_model, (8, 64)), "cnn": (cnn_model, (1, 3, 32, 32))}


def model_input(name, seed=0):
    return np.random.default_rng(seed).standard_normal(MODELS[name][1]).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(MODELS))
def cross(request, tmp_path_factory):
    """(model name, ModelProto, aarch64 Module, exported artifact directory)."""
    model = MODELS[request.param][0]()
    mod = slimc.compile(model, target="aarch64")
    path = str(tmp_path_factory.mktemp("a64") / f"{request.param}.slimc")
    mod.export(path)
    return request.param, model, mod, path


# ----- ELF, read with struct ------------------------------------------------------------------

def read_elf(path):
    """The header fields these tests check, and the symbols of .symtab and .dynsym:
    {name: (binding, type, defined)}. Only ELF64 little-endian is parsed further."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    info = {"class": data[4], "data": data[5]}  # EI_CLASS 2: 64-bit; EI_DATA 1: little-endian
    if info["class"] != 2 or info["data"] != 1:
        return info
    info["type"], info["machine"] = struct.unpack_from("<HH", data, 16)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    symbols = {}
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type not in (SHT_SYMTAB, SHT_DYNSYM):
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            st_name, st_info, _, st_shndx, _, _ = struct.unpack_from("<IBBHQQ", data, pos)
            end = data.index(b"\0", strtab_offset + st_name)
            name = data[strtab_offset + st_name:end].decode()
            if name:
                symbols[name] = (st_info >> 4, st_info & 0xF, st_shndx != 0)
    info["symbols"] = symbols
    return info


def check_aarch64_elf(path, elf_type):
    elf = read_elf(path)
    assert (elf["class"], elf["data"]) == (2, 1), "expected ELFCLASS64, little-endian"
    assert elf["machine"] == EM_AARCH64, f"e_machine is {elf['machine']}, not EM_AARCH64"
    assert elf["type"] == elf_type
    for entry in ("slimc_main", "slimc_run"):
        assert elf["symbols"].get(entry) == (STB_GLOBAL, STT_FUNC, True), \
            f"{entry} is not a defined global function in {path}"
    return elf


def test_elf_reader_tells_architectures_apart(tmp_path):
    """The reader is not a rubber stamp: a host (x86-64) export reads as EM_X86_64."""
    mod = slimc.compile(mlp_model(), target="x86")
    mod.export(str(tmp_path / "host"))
    elf = read_elf(str(tmp_path / "host" / "model.so"))
    assert (elf["class"], elf["data"], elf["type"], elf["machine"]) == (2, 1, ET_DYN, EM_X86_64)
    assert elf["symbols"]["slimc_main"] == (STB_GLOBAL, STT_FUNC, True)
    readelf = shutil.which("readelf")
    if readelf:  # cross-check the symbol names with binutils where it exists
        out = subprocess.run([readelf, "-Ws", str(tmp_path / "host" / "model.so")],
                             capture_output=True, text=True, check=True).stdout
        for name in ("slimc_main", "slimc_run"):
            assert re.search(rf"FUNC\s+GLOBAL\s+DEFAULT\s+\d+\s+{name}$", out, re.M)


# ----- aarch64: what can be checked on this host ----------------------------------------------

def test_aarch64_object_is_an_aarch64_elf_naming_the_entry(cross):
    _, _, _, path = cross
    elf = check_aarch64_elf(os.path.join(path, "model.o"), ET_REL)
    # the generated code calls libc, libm and the threading runtime only (as on x86-64)
    undefined = {n for n, (_, _, defined) in elf["symbols"].items() if not defined}
    strange = {n for n in undefined if not n.startswith(("GOMP_", "omp_", "mem"))
               and n not in ("expf", "logf", "tanhf", "erff", "powf", "clock_gettime")}
    assert not strange, f"unexpected undefined symbols: {sorted(strange)}"


@needs_cross_cc
def test_aarch64_shared_library_is_an_aarch64_elf(cross):
    _, _, _, path = cross
    check_aarch64_elf(os.path.join(path, "model.so"), ET_DYN)


def test_aarch64_assembly_is_neon(cross):
    _, _, mod, _ = cross
    asm = mod.assembly
    assert re.search(r"\bfmla\s+v\d+\.4s", asm), "no NEON fused multiply-add on 4 floats"
    assert not re.search(r"%[xy]mm\d|\bvfmadd", asm), "x86 code in the AArch64 assembly"
    assert re.search(r"msr\s+FPCR", asm, re.I), "flush-to-zero is not set through FPCR"
    assert 'target triple = "aarch64-unknown-linux-gnu"' in mod.llvm_ir
    assert "llvm.x86" not in mod.llvm_ir


def test_aarch64_module_inspects_but_refuses_calls(cross):
    name, _, mod, _ = cross
    assert mod.kernels and all(k.ops for k in mod.kernels)
    assert mod.memory.code_bytes > 0 and mod.memory.weights_bytes > 0
    assert all(k.name in mod.llvm_ir for k in mod.kernels)  # names survive into the IR
    x = model_input(name)
    for call in (lambda: mod(x), lambda: mod.profile(x)):
        with pytest.raises(slimc.TargetError, match=r"target is aarch64 and this host is x86_64"
                                                    r".*mod\.export\(path\)"):
            call()


def test_aarch64_module_with_free_shapes_refuses_before_compiling():
    g = parse("""# slimc-ir v1
graph @free(%x: f32[N,16]) -> (f32[N,16]) {
  %y = relu(%x) : f32[N,16]
  return %y
}
""")
    mod = slimc.compile(g, target="aarch64")
    with pytest.raises(slimc.TargetError, match="aarch64"):
        mod(np.zeros((3, 16), np.float32))
    assert mod._specializations == {}  # nothing was compiled just to be refused


def test_aarch64_manifest_and_load_refusal(cross):
    _, _, _, path = cross
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["target"]["triple"] == "aarch64-unknown-linux-gnu"
    assert manifest["target"]["cpu"] == "generic" and "+neon" in manifest["target"]["features"]
    assert manifest["entry"]["symbol"] == "slimc_main"
    assert "model.o" in manifest["files"] and "weights.bin" in manifest["files"]
    assert ("model.so" in manifest["files"]) == (CROSS_CC is not None)
    assert manifest["threads"] == 0  # threads=None: decided by OpenMP on the target
    with pytest.raises(slimc.SlimcError, match="architecture mismatch.*aarch64.*x86_64"):
        slimc.load(path)


def test_aarch64_export_without_cross_linker_writes_the_object(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMC_CROSS_CC", str(tmp_path / "no-such-gcc"))
    mod = slimc.compile(mlp_model(), target="aarch64")
    out = tmp_path / "obj_only"
    mod.export(str(out))
    assert sorted(os.listdir(out)) == ["manifest.json", "model.o", "weights.bin"]
    with open(out / "manifest.json") as f:
        assert sorted(json.load(f)["files"]) == ["model.o", "weights.bin"]
    check_aarch64_elf(str(out / "model.o"), ET_REL)


def test_aarch64_threads():
    """threads=None leaves the count to OpenMP on the target; threads=1 never forks."""
    many = slimc.compile(parse(DENORMAL), target="aarch64")
    assert "GOMP_parallel" in many.llvm_ir and "omp_get_max_threads" in many.llvm_ir
    one = slimc.compile(parse(DENORMAL), target="aarch64", threads=1)
    assert "GOMP_parallel" not in one.llvm_ir
    two = slimc.compile(parse(DENORMAL), target="aarch64", threads=2)
    assert "GOMP_parallel" in two.llvm_ir and "omp_get_max_threads" not in two.llvm_ir


# ----- x86-64-v3: portable, runs here ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_x86_64_v3_runs_and_matches_the_interpreter(name):
    from slimc.codegen.cpu.target import CpuTarget

    if not CpuTarget.from_name("x86-64-v3").is_host:
        pytest.skip("this host cannot run x86-64-v3 code")
    model = MODELS[name][0]()
    mod = slimc.compile(model, target="x86-64-v3")
    assert mod._current().target.cpu == "x86-64-v3"
    assert re.search(r"%ymm\d", mod.assembly) and not re.search(r"%zmm\d", mod.assembly)
    x = model_input(name)
    np.testing.assert_allclose(mod(x)[0], interpreter_run(model, [x])[0], rtol=1e-4, atol=1e-5)


# ----- aarch64 under qemu-user ----------------------------------------------------------------

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>

void slimc_main(void **inputs, void **outputs, void *arena, void *weights);

#ifdef WARM_POOL
/* libgomp's workers are started before the call, with the FP state this thread has now:
   the model must hand flush-to-zero to them itself (threads started inside a call would
   inherit it from the calling thread and hide a missing hand-over). */
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
static void nothing(void *data) { (void)data; }
#endif

static unsigned long fpcr(void) {
    unsigned long v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return v;
}

static void *alloc64(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64 + 64); }

static void *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = alloc64(n);
    if (fread(p, 1, n, f) != n) { perror(path); exit(2); }
    fclose(f);
    return p;
}

/* driver WEIGHTS ARENA_BYTES N_IN IN_PATH... N_OUT (OUT_PATH OUT_BYTES)... */
int main(int argc, char **argv) {
    int a = 1;
    void *weights = slurp(argv[a++]);
    void *arena = alloc64(strtoull(argv[a++], 0, 10));
    void *inputs[16], *outputs[16];
    const char *paths[16];
    size_t sizes[16];
    int nin = atoi(argv[a++]);
    for (int i = 0; i < nin; i++) inputs[i] = slurp(argv[a++]);
    int nout = atoi(argv[a++]);
    for (int i = 0; i < nout; i++) {
        paths[i] = argv[a++];
        sizes[i] = strtoull(argv[a++], 0, 10);
        outputs[i] = alloc64(sizes[i]);
    }
    if (a != argc) { fprintf(stderr, "bad arguments\n"); return 2; }
#ifdef WARM_POOL
    GOMP_parallel(nothing, 0, 0, 0);
#endif
    unsigned long before = fpcr();
    slimc_main(inputs, outputs, arena, weights);
    printf("fpcr %lu %lu\n", before, fpcr());  /* the caller's FP state must come back */
    for (int i = 0; i < nout; i++) {
        FILE *f = fopen(paths[i], "wb");
        if (!f || fwrite(outputs[i], 1, sizes[i], f) != sizes[i]) { perror(paths[i]); return 2; }
        fclose(f);
    }
    return 0;
}
"""


def run_under_qemu(artifact, inputs, workdir, threads=None):
    """Link the artifact's model.so with the C driver, run it under qemu-aarch64 with
    `inputs`, and return its outputs as numpy arrays shaped as the manifest says."""
    with open(os.path.join(artifact, "manifest.json")) as f:
        manifest = json.load(f)
    assert all(s == ["kernel"] for s in manifest["output_sources"]), \
        "the driver reads outputs that kernels write"
    os.makedirs(workdir, exist_ok=True)
    driver_c, exe = os.path.join(workdir, "driver.c"), os.path.join(workdir, "driver")
    with open(driver_c, "w") as f:
        f.write(DRIVER)
    libs = [f"-l{x}" for x in manifest["entry"]["link_libraries"]]
    warm = ["-DWARM_POOL"] if "gomp" in manifest["entry"]["link_libraries"] else []
    subprocess.run([CROSS_CC, "-O1", *warm, "-o", exe, driver_c,
                    os.path.abspath(os.path.join(artifact, "model.so"))] + libs,
                   check=True, capture_output=True)
    argv = [QEMU, "-L", SYSROOT, exe, os.path.join(artifact, "weights.bin"),
            str(manifest["arena_bytes"]), str(len(inputs))]
    for i, x in enumerate(inputs):
        spec = manifest["inputs"][i]
        x = np.ascontiguousarray(x, dtype=np.dtype(spec["dtype"]))
        assert list(x.shape) == spec["shape"]
        x.tofile(os.path.join(workdir, f"in{i}.bin"))
        argv.append(os.path.join(workdir, f"in{i}.bin"))
    argv.append(str(len(manifest["outputs"])))
    for j, spec in enumerate(manifest["outputs"]):
        nbytes = int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
        argv += [os.path.join(workdir, f"out{j}.bin"), str(nbytes)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"qemu run failed ({done.returncode}): {done.stderr}"
    before, after = re.search(r"fpcr (\d+) (\d+)", done.stdout).groups()
    assert before == after, f"FPCR was {before} before the call and {after} after it"
    return [np.fromfile(os.path.join(workdir, f"out{j}.bin"), np.dtype(spec["dtype"]))
            .reshape(spec["shape"]) for j, spec in enumerate(manifest["outputs"])]


@needs_qemu
@pytest.mark.parametrize("threads", [1, 3])
def test_aarch64_library_runs_under_qemu_and_matches_the_interpreter(cross, tmp_path, threads):
    name, model, mod, path = cross
    if name == "cnn":  # its convolutions really run on `threads` threads
        assert "GOMP_parallel" in mod.llvm_ir
    x = model_input(name, seed=threads)
    got = run_under_qemu(path, [x], str(tmp_path), threads=threads)
    want = interpreter_run(model, [x])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@needs_qemu
def test_aarch64_flushes_denormals_through_fpcr_under_qemu(tmp_path):
    """denormals="flush" sets FPCR.FZ for the call, on every thread; "keep" does not."""
    x = np.ones((64, 1024), np.float32)
    results = {}
    for mode in ("flush", "keep"):
        mod = slimc.compile(parse(DENORMAL), target="aarch64", denormals=mode)
        mod.export(str(tmp_path / mode))
        assert "GOMP_parallel" in mod.llvm_ir
        results[mode] = run_under_qemu(str(tmp_path / mode), [x], str(tmp_path / f"run_{mode}"),
                                       threads=2)[0]
    assert (results["flush"] == 0).all()
    assert (results["keep"] != 0).all() and np.allclose(results["keep"], 1e-40, rtol=1e-2, atol=0)


def test_command_line_compiles_for_aarch64(tmp_path, capsys):
    from slimc.cli import main

    onnx.save(mlp_model(), str(tmp_path / "mlp.onnx"))
    out = tmp_path / "mlp.slimc"
    assert main(["compile", str(tmp_path / "mlp.onnx"), "-o", str(out), "--target", "aarch64"]) == 0
    assert "model.o" in capsys.readouterr().out
    check_aarch64_elf(str(out / "model.o"), ET_REL)
