"""`slimc.Target`: what a target string means, and the backend that compiles for it.

    Target("x86")          this host's x86-64 CPU (its own CPU name and features)
    Target("x86-64-v3")    portable AVX2 + FMA x86-64;  "x86-64-v4": portable AVX-512
    Target("aarch64")      64-bit Arm Linux with NEON, cross-compiled ahead of time
    Target("cuda")         the NVIDIA GPU this process sees (else code for sm_80)
    Target("cuda:sm_90")   an NVIDIA GPU of that architecture (Hopper; "cuda:sm_80": Ampere)

A target string names a *kind* (cpu, cuda, or one a user registers with
`register_target_kind`) and, inside it, a machine. The kind's backend (codegen/backend.py)
is what `compile` drives; the Target is the public name users pass around, print and compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


# (kind, does this string name a target of the kind?, make its backend from the string);
# tried newest first, so a kind a user registers can claim strings a built-in kind refuses
_KINDS: list[tuple[str, Callable[[str], bool], Callable[[str], object]]] = []


def register_target_kind(kind: str, matches: Callable[[str], bool],
                         make_backend: Callable[[str], object]) -> None:
    """Teach `Target` a kind of target: `matches(s)` says whether the (lower-case) string
    `s` names one, `make_backend(s)` returns its `Backend`."""
    _KINDS.append((kind, matches, make_backend))


def _is_cpu(name: str) -> bool:
    from slimc.codegen.cpu.target import CpuTarget

    return name in CpuTarget.NAMES


def _cpu_backend(name: str):
    from slimc.codegen.cpu.backend import CpuBackend
    from slimc.codegen.cpu.target import CpuTarget

    return CpuBackend(CpuTarget.from_name(name))


def _cuda_backend(name: str):
    from slimc.codegen.cuda.backend import CudaBackend
    from slimc.codegen.cuda.target import CudaTarget
    from slimc.runtime.cuda_driver import device_sm, no_gpu_reason

    visible = device_sm() if name == "cuda" else None
    return CudaBackend(CudaTarget.from_name(name, visible_sm=visible), gpu_missing=no_gpu_reason)


register_target_kind("cpu", _is_cpu, _cpu_backend)
register_target_kind("cuda", lambda s: s == "cuda" or s.startswith("cuda:"), _cuda_backend)


@dataclass(frozen=True)
class Target:
    """A compilation target. `Target("x86")`, or pass the string to `compile` directly."""

    name: str
    kind: str = field(init=False)
    backend: object = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        key = self.name.strip().lower() if isinstance(self.name, str) else self.name
        if not isinstance(key, str):
            raise TypeError(f"a target is a string such as 'x86', got {self.name!r}")
        for kind, matches, make in reversed(_KINDS):
            if matches(key):
                object.__setattr__(self, "name", key)
                object.__setattr__(self, "kind", kind)
                object.__setattr__(self, "backend", make(key))
                return
        raise ValueError(f"unknown target {self.name!r}; expected 'x86', 'x86-64-v3', "
                         f"'x86-64-v4', 'aarch64', 'cuda[:sm_XX]', or a kind registered with "
                         f"slimc.target.register_target_kind")

    @classmethod
    def of(cls, target: "str | Target") -> "Target":
        return target if isinstance(target, Target) else cls(target)

    def __str__(self) -> str:
        return self.name
