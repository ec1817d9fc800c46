"""The compile cache: a hit is identical; any change to the key misses."""

import time

import numpy as np
import pytest

import slimc
from slimc.ir import parse
from slimc.runtime import cache

GRAPH = """# slimc-ir v1
graph @c(%x: f32[32,64]) -> (f32[32,64]) {
  const %w: f32[64] = elided
  %a = mul(%x, %w) : f32[32,64]
  %b = tanh(%a) : f32[32,64]
  %c = sigmoid(%b) : f32[32,64]
  %d = reduce_sum(%c) {axes=[1], keepdims=1} : f32[32,1]
  %e = sub(%c, %d) : f32[32,64]
  return %e
}
"""


def graph(seed=0):
    g = parse(GRAPH)
    g.constants["w"].data = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
    return g


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_second_compile_hits(fresh_cache):
    """(How much faster a hit is, bench.compile_time measures; tests assert no times.)"""
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    first = slimc.compile(graph())
    second = slimc.compile(graph())
    assert isinstance(second._current(), cache.CachedModule)
    assert not isinstance(first._current(), cache.CachedModule)
    np.testing.assert_array_equal(first(x)[0], second(x)[0])
    assert "tanh" in second.llvm_ir and "%e = sub" in str(second.graph)
    # a hit still answers every inspection a fresh compile does (the listing made on demand)
    assert second.kernels and "ret" in second.assembly and ".text" in second.assembly


@pytest.mark.parametrize("change", ["weights", "opt_level", "threads", "denormals", "source"])
def test_any_change_to_the_key_misses(fresh_cache, monkeypatch, change):
    slimc.compile(graph())
    kw, g = {}, graph()
    if change == "weights":
        g = graph(seed=1)
    elif change == "opt_level":
        kw["opt_level"] = 1
    elif change == "threads":
        kw["threads"] = 1
    elif change == "denormals":
        kw["denormals"] = "keep"
    elif change == "source":
        monkeypatch.setattr(cache, "source_hash", lambda: "edited slimc")
    mod = slimc.compile(g, **kw)
    assert not isinstance(mod._current(), cache.CachedModule)


def test_other_cpu_features_miss(fresh_cache):
    from dataclasses import replace

    from slimc.codegen.cpu.backend import CpuBackend
    from slimc.codegen.cpu.target import CpuTarget

    host = CpuTarget.host()
    other = replace(host, features=host.features + ",+made-up-feature", _dl_cache={})
    g = graph()
    assert cache.cache_key(g, CpuBackend(host).cache_identity, {}) != \
        cache.cache_key(g, CpuBackend(other).cache_identity, {})


def test_damaged_entry_is_rebuilt(fresh_cache):
    slimc.compile(graph())
    cache.wait()  # the entry is written in the background
    (entry,) = [p for p in fresh_cache.iterdir() if not p.name.startswith(".")]
    (entry / "weights.bin").write_bytes(b"garbage")
    mod = slimc.compile(graph())
    assert not isinstance(mod._current(), cache.CachedModule)


def test_entries_are_not_artifacts(fresh_cache):
    """Cache entries carry sizes, not checksums (the cache loads them unverified, mapped): a
    verified load, which is what `slimc.load` does, refuses one rather than trust it."""
    from slimc.runtime.export import ArtifactError, load

    slimc.compile(graph())
    cache.wait()  # the entry is written in the background
    (entry,) = [p for p in fresh_cache.iterdir() if not p.name.startswith(".")]
    with pytest.raises(ArtifactError, match="no checksum"):
        load(str(entry))


def test_a_module_from_the_cache_exports_a_loadable_artifact(fresh_cache, tmp_path_factory):
    """Module.export of a module the cache served copies the entry and adds the checksums a
    verified load wants (it used to copy the entry as it was: `slimc.load` refused it)."""
    from slimc.runtime.export import load

    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    slimc.compile(graph())
    cache.wait()
    hit = slimc.compile(graph())
    assert isinstance(hit._current(), cache.CachedModule)
    out = str(tmp_path_factory.mktemp("artifact") / "out")
    hit.export(out)
    np.testing.assert_array_equal(load(out)(x)[0], hit(x)[0])


def test_compile_leaves_numpy_huge_pages_as_they_were(fresh_cache):
    """Compiling turns numpy's huge-page advice off for its own allocations only."""
    from slimc.ir.buffers import small_pages

    multiarray = pytest.importorskip("numpy._core.multiarray")
    before = multiarray._get_madvise_hugepage()
    with small_pages():
        with small_pages():
            assert multiarray._get_madvise_hugepage() is False
        assert multiarray._get_madvise_hugepage() is False
    assert multiarray._get_madvise_hugepage() == before
    slimc.compile(graph())
    assert multiarray._get_madvise_hugepage() == before


def test_a_held_setting_is_restored_by_the_last_holder():
    """Nested and concurrent holders share one change; the last to leave restores."""
    import threading

    from slimc.ir.process_settings import HeldSetting

    state = {"value": "user's"}
    changes = []

    def change():
        changes.append(1)
        saved, state["value"] = state["value"], "slimc's"
        return saved

    setting = HeldSetting(change, lambda saved: state.update(value=saved))
    inside = threading.Barrier(3)

    def holder():
        with setting.held():
            inside.wait()  # all three hold it at once
            assert state["value"] == "slimc's"

    threads = [threading.Thread(target=holder) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["value"] == "user's" and len(changes) == 1
    with setting.held(), setting.held():
        assert state["value"] == "slimc's"
    assert state["value"] == "user's"


def test_a_store_left_half_written_is_removed_later(fresh_cache):
    """A killed process leaves its temporary folder; the next store removes it once stale."""
    import os

    old, young = fresh_cache / ".deadbeef.old", fresh_cache / ".cafe.young"
    for d in (old, young):
        d.mkdir()
        (d / "weights.bin").write_bytes(b"x" * 100)
    hours_ago = time.time() - 2 * cache.STALE_SECONDS
    os.utime(old, (hours_ago, hours_ago))
    slimc.compile(graph())
    cache.wait()
    assert not old.exists() and young.exists()  # a store under way elsewhere is left alone


def test_cache_can_be_turned_off(fresh_cache, monkeypatch):
    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    slimc.compile(graph())
    mod = slimc.compile(graph())
    assert not isinstance(mod._current(), cache.CachedModule)


def test_cache_is_bounded_least_recently_used_first(fresh_cache, monkeypatch):
    def entries():
        cache.wait()
        return {p.name for p in fresh_cache.iterdir()
                if not p.name.startswith(".") and (p / "manifest.json").exists()}

    def size(name):
        return sum(f.stat().st_size for f in (fresh_cache / name).rglob("*") if f.is_file())

    slimc.compile(graph(0))
    (e0,) = entries()
    monkeypatch.setenv("SLIMC_CACHE_MAX", str(int(2.5 * size(e0))))
    slimc.compile(graph(1))
    (e1,) = entries() - {e0}
    time.sleep(0.01)
    slimc.compile(graph(0))  # a hit: e0 is now more recently used than e1
    slimc.compile(graph(2))  # three entries do not fit: the least recently used one goes
    left = entries()
    assert e1 not in left and e0 in left and len(left) == 2, (e0, e1, left)
    # the entry just stored stays even when it alone is over the limit
    monkeypatch.setenv("SLIMC_CACHE_MAX", "1")
    slimc.compile(graph(3))
    assert len(entries()) == 1
    monkeypatch.setenv("SLIMC_CACHE_MAX", "lots")
    with pytest.raises(slimc.SlimcError, match="SLIMC_CACHE_MAX='lots': expected bytes"):
        slimc.compile(graph(4))


def _mul_model(w):
    """y = x * w, w an initializer: an ONNX file whose weights the tests change."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "mul",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 256])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_model_file_seen_before_is_not_read_again(fresh_cache, tmp_path, monkeypatch):
    import onnx

    from slimc import compiler

    rng = np.random.default_rng(3)
    w, x = rng.standard_normal(256).astype(np.float32), rng.standard_normal((4, 256)).astype(
        np.float32)
    path = str(tmp_path / "m.onnx")
    onnx.save(_mul_model(w), path)
    slimc.compile(path)

    def no_import(*a, **k):
        raise AssertionError("the file was imported again")

    with monkeypatch.context() as m:
        m.setattr(compiler, "import_model", no_import)
        mod = slimc.compile(path)
        np.testing.assert_array_equal(mod(x)[0], x * w)
    assert isinstance(mod._current(), cache.CachedModule)
    assert [v.name for v in mod.source_graph.inputs] == ["x"]  # imported when asked for


@pytest.mark.parametrize("external", [False, True])
def test_a_changed_model_file_misses(fresh_cache, tmp_path, external):
    """New weights of the same size, in the .onnx or, with the .onnx untouched, in its
    external data file: the stamps differ (ctime changes on every write), the file is
    compiled again."""
    import onnx

    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    path, data = str(tmp_path / "m.onnx"), tmp_path / "m.data"
    w = rng.standard_normal(256).astype(np.float32)
    if external:
        onnx.save(_mul_model(w), path, save_as_external_data=True, location="m.data",
                  size_threshold=0)
    else:
        onnx.save(_mul_model(w), path)
    np.testing.assert_array_equal(slimc.compile(path)(x)[0], x * w)
    w = rng.standard_normal(256).astype(np.float32)
    if external:
        assert data.stat().st_size == w.nbytes
        with open(data, "r+b") as f:  # in place: same file, same size
            f.write(w.tobytes())
    else:
        onnx.save(_mul_model(w), path)
    np.testing.assert_array_equal(slimc.compile(path)(x)[0], x * w)
