"""The manifest of an exported artifact (runtime/export.py): which of its fields the compiled
code relies on, their digests (linked into the library at export, compared at load), and
reading a manifest field by field, each problem an `ArtifactError` naming the file and the
field rather than a KeyError from wherever the field was first used."""

from __future__ import annotations

import ctypes
import hashlib
import json
from typing import NamedTuple

import numpy as np

from slimc.ir.errors import SlimcError

from .native import COPY_INPUT, COPY_OUTPUT, KERNEL
from .native import WEIGHTS as FROM_WEIGHTS


class ArtifactError(SlimcError):
    pass


# The manifest fields the compiled code relies on: a call trusts the inputs' and outputs'
# dtypes and shapes (the buffers' sizes), where each output comes from, the arena's size,
# the kernels (profile's table of times has one slot each), the target (the CPU features
# checked at load) and a GPU artifact's launches. Their digests, and the weights' size, are
# linked into the library as INTERFACE_SYMBOL (a GPU artifact's: the PTX's last line, after
# PTX_RECORD); load compares them with the manifest's.
INTERFACE_FIELDS = ("inputs", "outputs", "output_sources", "arena_bytes", "kernels", "target",
                    "launches")
INTERFACE_SYMBOL = "slimc_interface"
PTX_RECORD = f"\n// {INTERFACE_SYMBOL} "


def interface_digests(manifest: dict, weights_bytes: int) -> dict:
    """{field: SHA-256 of its JSON} for each of INTERFACE_FIELDS, and the weights' size. The
    digests are of the manifest as JSON reads it back (sorted keys), so export and load hash
    the same text."""
    fields = {key: manifest.get(key) for key in INTERFACE_FIELDS}
    fields["weights_bytes"] = int(weights_bytes)
    return {key: hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"))
                                .encode()).hexdigest() for key, value in fields.items()}


# ----- reading a manifest ----------------------------------------------------------------------

_KINDS = {int: "an integer", str: "a string", list: "a list", dict: "an object"}


def field(record, key: str, kind: type, mpath: str, where: str = ""):
    """record[key], which must be of type `kind` (a bool is no integer); else an
    ArtifactError naming the manifest file and the field (`where` its path in the manifest:
    "inputs[0].")."""
    if not isinstance(record, dict):
        raise ArtifactError(f"{mpath}: {where.rstrip('.') or 'the manifest'} is not an object; "
                            f"the manifest is damaged or was edited: refused")
    if key not in record:
        raise ArtifactError(f"{mpath}: the field {where + key!r} is missing; the manifest is "
                            f"damaged or was edited: refused")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ArtifactError(f"{mpath}: the field {where + key!r} is {value!r}, not "
                            f"{_KINDS.get(kind, kind.__name__)}: refused")
    return value


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _specs(manifest: dict, key: str, mpath: str) -> list:
    """The manifest's `inputs` or `outputs` as (name, numpy dtype, shape, type text), each a
    dtype of plain values (no objects: pointers) and a shape of non-negative ints; else
    ArtifactError naming the field."""
    specs = []
    for i, spec in enumerate(field(manifest, key, list, mpath)):
        where = f"{key}[{i}]."
        text = field(spec, "dtype", str, mpath, where)
        try:
            dtype = np.dtype(text)
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.hasobject or dtype.fields or dtype.subdtype:
            raise ArtifactError(f"{mpath}: the field {where + 'dtype'!r} is {text!r}, not a "
                                f"numpy dtype of plain values: refused")  # (bf16 is '<V2')
        shape = field(spec, "shape", list, mpath, where)
        if not all(_is_count(d) for d in shape):
            raise ArtifactError(f"{mpath}: the field {where + 'shape'!r} is {shape!r}, not a "
                                f"list of non-negative integers: refused")
        specs.append((field(spec, "name", str, mpath, where), dtype, tuple(shape),
                      field(spec, "type", str, mpath, where)))
    return specs


def _source_ok(source, inputs: list, outputs: list, j: int, weights_bytes: int) -> bool:
    """Whether `source` (from output_sources) can fill output `j`: a known kind whose index
    is an input or output, or whose weights range lies inside the weights blob."""
    if not isinstance(source, list) or not source:
        return False
    if source == [KERNEL]:
        return True
    if len(source) != 2 or not _is_count(source[1]):
        return False
    kind, at = source
    if kind == COPY_OUTPUT:
        return at < len(outputs)
    if kind == COPY_INPUT:
        return at < len(inputs)
    _, dtype, shape, _ = outputs[j]
    return kind == FROM_WEIGHTS and at + dtype.itemsize * int(np.prod(shape)) <= weights_bytes


def _sources(manifest: dict, inputs: list, outputs: list, mpath: str,
             weights_bytes: int) -> list:
    """The manifest's `output_sources`, one per output, each one `_source_ok` takes."""
    sources = field(manifest, "output_sources", list, mpath)
    if len(sources) != len(outputs):
        raise ArtifactError(f"{mpath}: the field 'output_sources' lists {len(sources)} "
                            f"sources for {len(outputs)} outputs: refused")
    for j, source in enumerate(sources):
        if not _source_ok(source, inputs, outputs, j, weights_bytes):
            raise ArtifactError(f"{mpath}: the field 'output_sources[{j}]' is {source!r}, "
                                f"which cannot fill output {j}: refused")
    return [tuple(s) for s in sources]


def _kernels(manifest: dict, mpath: str) -> list:
    """(name, ops) per kernel, for `profile` (an artifact may list none)."""
    kernels = []
    for i, k in enumerate(field(manifest, "kernels", list, mpath) if "kernels" in manifest
                          else []):
        ops = field(k, "ops", list, mpath, f"kernels[{i}].")
        kernels.append((field(k, "name", str, mpath, f"kernels[{i}]."), ops))
    return kernels


class Interface(NamedTuple):
    """What a NativeModule is built from, read from a manifest and checked."""

    inputs: list
    outputs: list
    output_sources: list
    arena_bytes: int
    kernels: list


def read_interface(manifest: dict, mpath: str, weights_bytes: int) -> Interface:
    """The manifest's interface, each field of the type and range the runtime needs (a
    clear ArtifactError naming the file and the field, not a KeyError or a crash later).
    Whether it is the interface the code was compiled with is `_check_interface`'s job."""
    inputs, outputs = _specs(manifest, "inputs", mpath), _specs(manifest, "outputs", mpath)
    arena = field(manifest, "arena_bytes", int, mpath)
    if arena < 0:
        raise ArtifactError(f"{mpath}: the field 'arena_bytes' is {arena}, below 0: refused")
    return Interface(inputs, outputs, _sources(manifest, inputs, outputs, mpath, weights_bytes),
                     arena, _kernels(manifest, mpath))


def library_record(library) -> "bytes | None":
    """The interface record linked into `library` (INTERFACE_SYMBOL), or None for a library
    from before there was one (an older slimc's)."""
    try:
        return ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(library,
                                                                      INTERFACE_SYMBOL)))
    except ValueError:
        return None


def ptx_record(ptx: str) -> tuple:
    """(the PTX without its interface record, the record or None: an older slimc's PTX)."""
    head, mark, tail = ptx.rpartition(PTX_RECORD)
    if not mark or tail.count("\n") != 1 or not tail.endswith("\n"):
        return ptx, None
    return head, tail[:-1].encode()


def check_interface(record: "bytes | None", code: str, manifest: dict, mpath: str,
                     weights_bytes: int) -> None:
    """Refuse a manifest whose interface is not the one `code` (a file name) was compiled
    with, naming the fields that differ: the code trusts the shapes, dtypes, sizes, sources
    and launches it lists, and an edited one makes a call read or write out of bounds. The
    `record` of its interface digests is in the code, which the manifest's checksum covers.
    Code without one (an artifact of an older slimc) is taken as it comes, as that slimc
    took it."""
    if record is None:
        return
    try:
        recorded = json.loads(record.decode())
    except (UnicodeDecodeError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        raise ArtifactError(f"{code}'s record of its interface ({INTERFACE_SYMBOL}) is "
                            f"unreadable: the artifact is damaged; refused")
    digests = interface_digests(manifest, weights_bytes)
    differ = [key for key in digests if recorded.get(key) != digests[key]]
    if differ:
        raise ArtifactError(f"{mpath} does not match the code in {code}: that was compiled "
                            f"with other {', '.join(differ)} (the manifest was edited, or "
                            f"its files come from two exports); refused: export the model "
                            f"again")
