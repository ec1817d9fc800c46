"""The CUDA driver API, the few calls slimc needs, through ctypes on libcuda.so.1.

Why ctypes rather than cuda-python: the calls are a dozen C functions with stable
signatures; ctypes needs no package, the same code runs wherever the NVIDIA driver is
installed, and a machine without one answers `no_gpu_reason()` at once. (Both were run on an
H100 here and computed the same results: ../shared/LLVM_NOTES.md.)

Every call is checked: a failing one raises `CudaError` with the function's name and CUDA's
own error name and text.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Optional, Sequence

from slimc.ir.errors import SlimcError


class CudaError(SlimcError):
    pass


_lib = None
_lib_error: Optional[str] = None
_lock = threading.Lock()
_context = None


def _load() -> Optional[ctypes.CDLL]:
    global _lib, _lib_error
    if _lib is None and _lib_error is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            _lib_error = f"the CUDA driver (libcuda.so.1) is not installed ({e})"
            return None
        rc = lib.cuInit(0)
        if rc != 0:
            _lib_error = f"cuInit failed: {_error_text(lib, rc)}"
            return None
        count = ctypes.c_int(0)
        lib.cuDeviceGetCount(ctypes.byref(count))
        if count.value < 1:
            _lib_error = "the CUDA driver sees no GPU"
            return None
        _lib = lib
    return _lib


def _error_text(lib, rc: int) -> str:
    name, text = ctypes.c_char_p(), ctypes.c_char_p()
    lib.cuGetErrorName(rc, ctypes.byref(name))
    lib.cuGetErrorString(rc, ctypes.byref(text))
    return f"{(name.value or b'CUDA_ERROR_%d' % rc).decode()}: {(text.value or b'').decode()}"


def no_gpu_reason() -> Optional[str]:
    """None if this process can run CUDA kernels, else why not."""
    with _lock:
        _load()
    return _lib_error


def device_sm() -> Optional[int]:
    """GPU 0's compute capability as an int (90 for an H100), or None without a GPU."""
    if no_gpu_reason() is not None:
        return None
    dev = ctypes.c_int()
    call("cuDeviceGet", ctypes.byref(dev), 0)
    major, minor = ctypes.c_int(), ctypes.c_int()
    call("cuDeviceGetAttribute", ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
    call("cuDeviceGetAttribute", ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
    return major.value * 10 + minor.value


def call(name: str, *args) -> None:
    """cu<name>(*args), raising CudaError unless it returns CUDA_SUCCESS."""
    lib = _load()
    if lib is None:
        raise CudaError(f"no CUDA GPU: {_lib_error}")
    rc = getattr(lib, name)(*args)
    if rc != 0:
        raise CudaError(f"{name} failed: {_error_text(lib, rc)}")


def context() -> None:
    """Make GPU 0's primary context current in this thread (once per thread)."""
    global _context
    with _lock:
        if _context is None:
            dev = ctypes.c_int()
            call("cuDeviceGet", ctypes.byref(dev), 0)
            ctx = ctypes.c_void_p()
            call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
            _context = ctx
    call("cuCtxSetCurrent", _context)


class DeviceBuffer:
    """`nbytes` of device memory, freed with the object."""

    def __init__(self, nbytes: int):
        context()
        self.nbytes = int(nbytes)
        self.ptr = ctypes.c_uint64(0)
        if self.nbytes:
            call("cuMemAlloc_v2", ctypes.byref(self.ptr), ctypes.c_size_t(self.nbytes))

    @property
    def address(self) -> int:
        return self.ptr.value

    def upload(self, host_address: int, nbytes: int, offset: int = 0) -> None:
        if nbytes:
            call("cuMemcpyHtoD_v2", ctypes.c_uint64(self.address + offset),
                 ctypes.c_void_p(host_address), ctypes.c_size_t(nbytes))

    def download(self, host_address: int, nbytes: int, offset: int = 0) -> None:
        if nbytes:
            call("cuMemcpyDtoH_v2", ctypes.c_void_p(host_address),
                 ctypes.c_uint64(self.address + offset), ctypes.c_size_t(nbytes))

    def __del__(self):
        if self.ptr.value and _lib is not None:
            _lib.cuMemFree_v2(ctypes.c_uint64(self.ptr.value))
            self.ptr.value = 0


class DeviceModule:
    """PTX (or a cubin) loaded with cuModuleLoadData: its kernels by name."""

    def __init__(self, image: bytes):
        context()
        self.handle = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(image)  # NUL-terminated for PTX
        call("cuModuleLoadData", ctypes.byref(self.handle), self._image)
        self._functions: dict = {}

    def function(self, name: str) -> ctypes.c_void_p:
        fn = self._functions.get(name)
        if fn is None:
            fn = ctypes.c_void_p()
            call("cuModuleGetFunction", ctypes.byref(fn), self.handle, name.encode())
            self._functions[name] = fn
        return fn


def launch(fn, grid: Sequence[int], block: Sequence[int], args: Sequence[ctypes._SimpleCData],
           stream=None, shared_bytes: int = 0) -> None:
    """cuLaunchKernel on `stream` (None: the default one); `args` are ctypes values, one per
    parameter."""
    params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.byref(a), ctypes.c_void_p)
                                            for a in args])
    call("cuLaunchKernel", fn, *[ctypes.c_uint(int(g)) for g in grid],
         *[ctypes.c_uint(int(b)) for b in block], ctypes.c_uint(shared_bytes), stream, params,
         None)


def synchronize() -> None:
    call("cuCtxSynchronize")


class Stream:
    """A CUDA stream, and the CUDA graph captured from the launches made in `capture`."""

    def __init__(self):
        context()
        self.handle = ctypes.c_void_p()
        call("cuStreamCreate", ctypes.byref(self.handle), 1)  # CU_STREAM_NON_BLOCKING
        self.graph = None  # an instantiated CUgraphExec

    def upload(self, buf: "DeviceBuffer", host_address: int, nbytes: int) -> None:
        if nbytes:
            call("cuMemcpyHtoDAsync_v2", ctypes.c_uint64(buf.address),
                 ctypes.c_void_p(host_address), ctypes.c_size_t(nbytes), self.handle)

    def download(self, buf: "DeviceBuffer", host_address: int, nbytes: int) -> None:
        if nbytes:
            call("cuMemcpyDtoHAsync_v2", ctypes.c_void_p(host_address),
                 ctypes.c_uint64(buf.address), ctypes.c_size_t(nbytes), self.handle)

    def copy(self, dst_address: int, src_address: int, nbytes: int) -> None:
        """Device to device."""
        if nbytes:
            call("cuMemcpyDtoDAsync_v2", ctypes.c_uint64(dst_address),
                 ctypes.c_uint64(src_address), ctypes.c_size_t(nbytes), self.handle)

    def capture(self, launch_all) -> None:
        """Record what `launch_all()` launches on this stream as a CUDA graph, replayed by
        `replay` with one call instead of one launch per kernel."""
        call("cuStreamBeginCapture_v2", self.handle, 2)  # CU_STREAM_CAPTURE_MODE_RELAXED
        try:
            launch_all()
        finally:
            graph = ctypes.c_void_p()
            call("cuStreamEndCapture", self.handle, ctypes.byref(graph))
        exe = ctypes.c_void_p()
        call("cuGraphInstantiateWithFlags", ctypes.byref(exe), graph, ctypes.c_ulonglong(0))
        self.graph = exe

    def replay(self) -> None:
        call("cuGraphLaunch", self.graph, self.handle)

    def synchronize(self) -> None:
        call("cuStreamSynchronize", self.handle)


class Timer:
    """Elapsed GPU milliseconds between two points on the default stream (CUDA events)."""

    def __init__(self):
        context()
        self.start, self.stop = ctypes.c_void_p(), ctypes.c_void_p()
        call("cuEventCreate", ctypes.byref(self.start), 0)
        call("cuEventCreate", ctypes.byref(self.stop), 0)

    def begin(self, stream=None) -> None:
        call("cuEventRecord", self.start, stream)

    def end(self, stream=None) -> float:
        call("cuEventRecord", self.stop, stream)
        call("cuEventSynchronize", self.stop)
        ms = ctypes.c_float()
        call("cuEventElapsedTime", ctypes.byref(ms), self.start, self.stop)
        return ms.value
