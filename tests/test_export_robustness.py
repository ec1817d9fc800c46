"""Export and load under misuse: exporting again into a loaded module's folder, manifests that
were edited or damaged, paths that cannot hold an artifact.

A test whose failure would be a crash (SIGBUS, SIGSEGV) runs its body in a subprocess, so the
crash fails the test instead of killing pytest.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import slimc
from slimc.ir import parse
from slimc.runtime import export as export_module
from slimc.runtime.export import ArtifactError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two kernels with an intermediate between them (fusion off): the arena is not empty.
GRAPH = """# slimc-ir v1
graph @robust(%x: f32[2,4]) -> (f32[2,3], f32[3]) {
  const %w: f32[4,3] = elided
  const %k: f32[3] = [1.0, 2.0, 3.0]
  %m = matmul(%x, %w) : f32[2,3]
  %y = tanh(%m) : f32[2,3]
  return %y, %k
}
"""
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


def compile_tiny(scale: float = 1.0, target=None):
    g = parse(GRAPH)
    g.constants["w"].data = scale * np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    options = {"target": target} if target else {"disable_passes": ["fusion"]}
    return slimc.compile(g, **options)


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    """Every module here is compiled, not served by the compile cache: these tests are about
    `export` of a compiled module (a cached one's export is `copy_artifact`'s test)."""
    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")


@pytest.fixture
def artifact(tmp_path):
    """(path of an exported tiny model, its outputs on X)."""
    mod = compile_tiny()
    path = str(tmp_path / "art")
    mod.export(path)
    return path, mod(X)


def edit_manifest(path: str, edit) -> None:
    mpath = os.path.join(path, "manifest.json")
    with open(mpath) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(mpath, "w") as f:
        json.dump(manifest, f)


def run_isolated(body: str, cache: str = "off") -> str:
    """Run `body` (Python, with slimc, numpy as np and the helpers above imported) in a fresh
    interpreter with SLIMC_CACHE_DIR=`cache`; its stdout. A crash there fails the test here,
    naming the signal."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "import numpy as np, slimc\n"
            "from tests.test_export_robustness import X, compile_neg, compile_tiny\n"
            + textwrap.dedent(body))
    env = dict(os.environ, SLIMC_CACHE_DIR=cache)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, (f"the subprocess ended with {done.returncode} (a negative "
                                  f"number is the signal that killed it):\n{done.stderr}")
    return done.stdout


# ----- exporting again into a folder a loaded module maps --------------------------------------

def compile_neg():
    """A model without weights, of another interface than GRAPH's."""
    return slimc.compile(parse("# slimc-ir v1\ngraph @neg(%x: f32[2,4]) -> (f32[2,4]) {\n"
                               "  %y = neg(%x) : f32[2,4]\n  return %y\n}\n"))


# The second model: no weights (the old mapping would run past the file's end: SIGBUS), or
# weights of the same size (the old module would compute with them).
SECOND = {"smaller": "compile_neg()", "same_size": "compile_tiny(scale=5.0)"}


@pytest.mark.parametrize("how", ["export", "copy_artifact"])
@pytest.mark.parametrize("second", sorted(SECOND))
def test_exporting_again_leaves_a_loaded_module_as_it_was(tmp_path, second, how):
    """A module loaded from a folder keeps its code and weights when another model is
    exported into that folder (`Module.export`, or a compile-cache entry copied out); a new
    load in the same process gets the new model."""
    out = run_isolated(f"""
        first, other = {str(tmp_path / "art")!r}, {str(tmp_path / "other")!r}
        compile_tiny().export(first)
        old = slimc.load(first)
        want = old(X)
        new = {SECOND[second]}
        if {how!r} == "export":
            new.export(first)
        else:
            from slimc.runtime.export import copy_artifact

            new.export(other)
            copy_artifact(other, first)
        for got, w in zip(old(X), want):
            np.testing.assert_array_equal(got, w)
        again = slimc.load(first)
        for got, w in zip(again(X), new(X)):
            np.testing.assert_array_equal(got, w)
        print("same")
        """)
    assert out.strip() == "same"


def test_exporting_a_cached_module_again_leaves_a_loaded_module_as_it_was(tmp_path):
    """The same through `Module.export` of a module the compile cache served."""
    out = run_isolated(f"""
        from slimc.runtime import cache
        first = {str(tmp_path / "art")!r}
        compile_tiny().export(first)
        old = slimc.load(first)
        want = old(X)
        compile_neg()
        cache.wait()
        new = compile_neg()
        assert isinstance(new._current(), cache.CachedModule)
        new.export(first)
        for got, w in zip(old(X), want):
            np.testing.assert_array_equal(got, w)
        print("same")
        """, cache=str(tmp_path / "cache"))
    assert out.strip() == "same"


def test_export_replaces_stale_files_and_leaves_no_temporaries(tmp_path):
    """An export into a folder that held another artifact (a foreign machine's object, a GPU
    artifact's PTX) leaves this artifact's files and the user's own, nothing else."""
    path = tmp_path / "art"
    path.mkdir()
    for name in ("model.o", "model.ptx", "model.cubin", "model.ll", "notes.txt"):
        (path / name).write_text("left from before")
    compile_tiny().export(str(path))
    assert sorted(os.listdir(path)) == ["manifest.json", "model.so", "notes.txt",
                                        "weights.bin"]
    assert (path / "notes.txt").read_text() == "left from before"
    np.testing.assert_array_equal(slimc.load(str(path))(X)[0], compile_tiny()(X)[0])


def test_a_failed_export_leaves_the_folder_as_it_was(artifact, monkeypatch):
    path, want = artifact
    before = {name: os.path.getmtime(os.path.join(path, name)) for name in os.listdir(path)}

    def no_linker(target):
        raise slimc.SlimcError("no linker here")

    monkeypatch.setattr(export_module, "_linker", no_linker)
    with pytest.raises(slimc.SlimcError, match="no linker here"):
        compile_tiny(scale=3.0).export(path)
    assert {name: os.path.getmtime(os.path.join(path, name))
            for name in os.listdir(path)} == before
    np.testing.assert_array_equal(slimc.load(path)(X)[0], want[0])


# ----- a manifest that does not match the compiled code ----------------------------------------

def _drop_outputs(m):
    m["outputs"], m["output_sources"] = [], []


def _drop_features(m):
    m["target"]["features"] = ""


EDITS = {  # name -> (edit, the field the error names)
    "output_dtype": (lambda m: m["outputs"][0].__setitem__("dtype", "<f8"), "outputs"),
    "output_shape": (lambda m: m["outputs"][0].__setitem__("shape", [1]), "outputs"),
    "input_shape": (lambda m: m["inputs"][0].__setitem__("shape", [1, 4]), "inputs"),
    "input_dtype": (lambda m: m["inputs"][0].__setitem__("dtype", "|b1"), "inputs"),
    "no_outputs": (_drop_outputs, "outputs, output_sources"),
    "arena_zero": (lambda m: m.__setitem__("arena_bytes", 0), "arena_bytes"),
    "sources": (lambda m: m.__setitem__("output_sources", [["kernel"], ["kernel"]]),
                "output_sources"),
    "fewer_kernels": (lambda m: m["kernels"].pop(), "kernels"),
    "no_features": (_drop_features, "target"),
}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("name", sorted(EDITS))
def test_an_edited_manifest_is_refused_naming_the_field(artifact, name, verify):
    """Load compares the manifest's interface with the record linked into the library (the
    checksums cover the library, not the manifest): an edit that would make a call read or
    write out of bounds, or compute garbage, is refused, with or without checksums."""
    path, _ = artifact
    edit, field = EDITS[name]
    with open(os.path.join(path, "manifest.json")) as f:
        assert json.load(f)["arena_bytes"] > 0  # (else arena_zero would change nothing)
    edit_manifest(path, edit)
    with pytest.raises(ArtifactError, match=rf"manifest\.json does not match the code in "
                                            rf"model\.so: that was compiled with other "
                                            rf"{field} \("):
        slimc.load(path, verify=verify)


def test_an_artifact_without_an_interface_record_still_loads(tmp_path, monkeypatch):
    """An older slimc's artifact (format 1, no record in its library) loads as it did."""
    def older(folder, digests):
        source = os.path.join(folder, "older.c")
        with open(source, "w") as f:
            f.write("int slimc_older_artifact;\n")
        return source

    monkeypatch.setattr(export_module, "_interface_source", older)
    mod = compile_tiny()
    mod.export(str(tmp_path / "art"))
    loaded = slimc.load(str(tmp_path / "art"))
    assert export_module.library_record(loaded._library) is None
    for got, want in zip(loaded(X), mod(X)):
        np.testing.assert_array_equal(got, want)


def test_an_edited_gpu_manifest_is_refused(tmp_path):
    """A GPU artifact carries the record on the PTX's last line; load takes it off again."""
    mod = compile_tiny(target="cuda")
    path = str(tmp_path / "art")
    mod.export(path)
    assert slimc.load(path).ptx == mod.ptx
    edit_manifest(path, lambda m: m["launches"][0].__setitem__("grid", [4096, 1, 1]))
    with pytest.raises(ArtifactError, match="model.ptx: that was compiled with other launches"):
        slimc.load(path)
    older = export_module.ptx_record(mod.ptx)  # an older slimc's PTX: no record
    assert older == (mod.ptx, None)


# ----- a manifest that is damaged ---------------------------------------------------------------

def _pop_features(m):
    m["target"].pop("features")


DAMAGE = {  # name -> (edit, what the error says)
    "no_inputs": (lambda m: m.pop("inputs"), "the field 'inputs' is missing"),
    "no_features": (_pop_features, "the field 'target.features' is missing"),
    "bad_dtype": (lambda m: m["inputs"][0].__setitem__("dtype", "banana"),
                  r"the field 'inputs\[0\].dtype' is 'banana', not a numpy dtype of plain values"),
    "object_dtype": (lambda m: m["outputs"][0].__setitem__("dtype", "|O"),
                     r"the field 'outputs\[0\].dtype' is '\|O', not a numpy dtype of plain values"),
    "negative_dim": (lambda m: m["inputs"][0].__setitem__("shape", [-1, 4]),
                     r"the field 'inputs\[0\].shape' is \[-1, 4\], not a list of non-neg"),
    "spec_not_object": (lambda m: m.__setitem__("outputs", [3]), r"outputs\[0\] is not an obj"),
    "arena_negative": (lambda m: m.__setitem__("arena_bytes", -5),
                       "the field 'arena_bytes' is -5, below 0"),
    "arena_text": (lambda m: m.__setitem__("arena_bytes", "128"),
                   "the field 'arena_bytes' is '128', not an integer"),
    "source_past_weights": (lambda m: m["output_sources"].__setitem__(1, ["weights", 10**9]),
                            r"the field 'output_sources\[1\]' is \['weights', 1000000000\], "
                            r"which cannot fill output 1"),
    "source_unknown": (lambda m: m["output_sources"].__setitem__(0, [2, 0]),
                       r"the field 'output_sources\[0\]' is \[2, 0\], which cannot fill output 0"),
    "files_not_object": (lambda m: m.__setitem__("files", ["model.so"]),
                         "the field 'files' is .*, not an object"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_damaged_manifest_is_a_clear_error_naming_the_file_and_field(artifact, name):
    path, _ = artifact
    edit, message = DAMAGE[name]
    edit_manifest(path, edit)
    with pytest.raises(ArtifactError, match=r"manifest\.json: " + message):
        slimc.load(path)


def test_a_library_that_is_not_one_is_refused_clearly(artifact):
    """Without checksums (the compile cache's loads) a damaged library is an ArtifactError
    naming it, not the loader's OSError."""
    path, _ = artifact
    lib = os.path.join(path, "model.so")
    size = os.path.getsize(lib)
    with open(lib, "wb") as f:
        f.write(b"\0" * size)
    with pytest.raises(ArtifactError, match=r"model\.so cannot be loaded"):
        slimc.load(path, verify=False)


# ----- paths that cannot hold an artifact -------------------------------------------------------

def test_export_to_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    with pytest.raises(slimc.SlimcError, match=f"cannot export to '{path}': it is a file") as e:
        compile_tiny().export(str(path))
    assert not isinstance(e.value, OSError)
    assert path.read_text() == "not a folder"


def test_export_to_a_folder_that_cannot_be_made_is_a_clear_error():
    with pytest.raises(slimc.SlimcError, match="cannot export to '/proc/no-such/art': the "
                                               "folder cannot be created") as e:
        compile_tiny().export("/proc/no-such/art")
    assert not isinstance(e.value, OSError)
