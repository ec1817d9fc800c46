"""What the CUDA backend generates code for: an NVIDIA GPU architecture, as LLVM's NVPTX
target sees it.

    Target("cuda")         the visible GPU's architecture, else sm_80 (Ampere)
    Target("cuda:sm_90")   Hopper (H100, H200); "cuda:sm_80": Ampere (A100)

The kernel generators shared with the CPU backend (codegen/cpu) ask a target a few facts
(`vector_width`, `has_fma`, ...): a GPU thread computes one element at a time, so the answers
here make them emit scalar code, which the GPU runs across threads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llvmlite import ir

TRIPLE = "nvptx64-nvidia-cuda"
# PTX ISA 8.0 (CUDA 12.0): sm_90 needs 7.8, the `maximum`/`minimum` NaN forms need 7.0
PTX_FEATURES = "+ptx80"
ARCHS = (80, 86, 89, 90)  # what ptxas of CUDA 13 takes that LLVM 22 knows


@dataclass(frozen=True)
class CudaTarget:
    name: str  # "cuda:sm_90"
    sm: int  # 90
    _dl_cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    # the facts the shared generators read (codegen/cpu/target.py's CpuTarget has the same)
    triple = TRIPLE
    arch = "nvptx64"
    features = PTX_FEATURES
    vector_width = 1  # one element per thread: scalar code
    num_vector_regs = 32
    has_fma = True
    has_avx512_vnni = False
    has_avx512f = False
    has_avx2 = False
    feature_set = frozenset()
    is_host = False  # its code never runs in this process as native code

    WARP = 32
    MAX_THREADS = 1024  # per block
    SHARED_BYTES = 48 * 1024  # static shared memory a block may use

    @classmethod
    def from_name(cls, name: str, visible_sm=None) -> "CudaTarget":
        """`visible_sm`: the compute capability of the GPU this process sees (90 for an
        H100), which plain "cuda" means; None: no GPU, and "cuda" means sm_80."""
        key = name.strip().lower()
        if key == "cuda":
            sm = _supported(visible_sm) or 80
        else:
            m = re.fullmatch(r"cuda:sm_?(\d+)", key)
            if m is None or int(m.group(1)) not in ARCHS:
                raise ValueError(f"unknown CUDA target {name!r}; expected 'cuda' or 'cuda:sm_XX' "
                                 f"with XX one of {', '.join(map(str, ARCHS))}")
            sm = int(m.group(1))
        return cls(name=f"cuda:sm_{sm}", sm=sm)

    @property
    def cpu(self) -> str:
        return f"sm_{self.sm}"

    @property
    def identity(self) -> str:
        return f"{TRIPLE}|{self.cpu}|{PTX_FEATURES}"

    def create_target_machine(self, opt: int = 3):
        from slimc.codegen.cpu.target import ensure_llvm_initialized
        import llvmlite.binding as llvm

        ensure_llvm_initialized(all_targets=True)
        return llvm.Target.from_triple(TRIPLE).create_target_machine(
            cpu=self.cpu, features=PTX_FEATURES, opt=opt)

    @property
    def data_layout(self) -> str:
        dl = self._dl_cache.get("dl")
        if dl is None:
            dl = self._dl_cache["dl"] = str(self.create_target_machine().target_data)
        return dl

    def new_ir_module(self, name: str = "slimc") -> ir.Module:
        m = ir.Module(name=name)
        m.triple = TRIPLE
        m.data_layout = self.data_layout
        return m


def _supported(sm):
    """The newest architecture in ARCHS that code for a GPU of compute capability `sm` may
    use (a newer GPU runs older PTX), or None."""
    if sm is None or sm < ARCHS[0]:
        return None
    return max(a for a in ARCHS if a <= sm)
