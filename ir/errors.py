"""slimc's errors: one hierarchy, each error names where the problem is.

`ModelError` is the user's model's fault (unsupported op, bad attribute, shape mismatch) and
names the node as the source model called it, and its op. `InternalError` is slimc's fault (a
bug): it names the pass, converter or kernel that failed and chains the original exception, so
a model problem is never dressed up as a bug or the other way round.
"""

from __future__ import annotations

from typing import Optional


class SlimcError(Exception):
    """Base of every error slimc raises on purpose."""


class ModelError(SlimcError):
    """Something in the model slimc was given is wrong or unsupported."""

    def __init__(self, message: str, *, node: Optional[str] = None, op: Optional[str] = None):
        self.node = node
        self.op = op
        self.detail = message
        where = ""
        if node is not None or op is not None:
            where = f"node {node!r}" if node else "unnamed node"
            if op:
                where += f" ({op})"
            where += ": "
        super().__init__(where + message)


class UnsupportedError(ModelError):
    """The model uses something slimc does not implement (an op, an opset, a dtype)."""


class ResourceError(ModelError):
    """The model asks for more than the machine can give (a tensor larger than its memory)."""


class InternalError(SlimcError):
    """A bug in slimc: `where` names the pass, converter or kernel that failed."""

    def __init__(self, message: str, *, where: Optional[str] = None):
        self.where = where
        super().__init__(f"internal error in {where}: {message}" if where else
                         f"internal error: {message}")


class VerificationError(SlimcError):
    """The IR broke one of its invariants (SSA, order, uses, types)."""


class TargetError(SlimcError):
    """Code compiled for one machine was asked to run on another (e.g. an aarch64 module
    called on an x86-64 host)."""


class InputError(SlimcError, ValueError):
    """Inputs given at call time do not match what the graph or module expects."""
