"""Expanding ONNX function ops: an op with no converter, whose schema defines it by a body of
simpler ops (Swish, RMSNormalization, the losses, Attention, ...), is replaced by that body.

ONNX gives two kinds of body: a fixed one (`schema.has_function`) and one built for the node's
attributes and input types (`has_context_dependent_function`). Either way the body is a
FunctionProto whose nodes refer to the caller's inputs, outputs and attributes by formal
names; this module renames them into the caller's scope and hands each body node back to the
normal converter loop, so a body that uses another function op is expanded in turn.
"""

from __future__ import annotations


# onnx is imported inside the functions: `import slimc` (and loading an exported artifact)
# must not import it.


def function_body(node, opset: int, input_types):
    """The body defining `node` at `opset`, or None if the op has none.

    `input_types`: onnx TypeProtos of the node's inputs (context-dependent bodies need them).
    """
    import onnx
    from onnx import defs

    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = defs.get_schema(node.op_type, opset, "")
    except Exception:
        return None
    proto = onnx.FunctionProto()
    if schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= opset]
        if not versions:
            return None
        proto.ParseFromString(schema.get_function_with_opset_version(max(versions)))
        return proto
    if schema.has_context_dependent_function:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if not versions or input_types is None:
            return None
        full = _with_defaults(node, schema)
        try:
            body = schema.get_context_dependent_function_with_opset_version(
                max(versions), full.SerializeToString(), [t.SerializeToString() for t in input_types])
        except Exception:
            return None
        proto.ParseFromString(body)
        return proto if proto.node else None
    return None


def has_function_body(op_type: str, opset: int) -> bool:
    from onnx import defs

    try:
        schema = defs.get_schema(op_type, opset, "")
    except Exception:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _with_defaults(node, schema):
    """The node with the schema's default attribute values filled in (bodies refer to them)."""
    import onnx

    full = onnx.NodeProto()
    full.CopyFrom(node)
    present = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in present and attr.default_value and attr.default_value.type:
            full.attribute.append(attr.default_value)
    return full


def expand(node, body, opset: int) -> tuple[list, dict]:
    """Body nodes renamed into the caller's scope, and the opsets the body was written for.

    Formal inputs/outputs become the caller's value names; other values get a prefix from the
    caller so they cannot clash; attribute references take the caller's attribute values.
    """
    import onnx
    from onnx import defs

    schema = defs.get_schema(node.op_type, opset, "")
    caller = _with_defaults(node, schema)
    attrs = {a.name: a for a in caller.attribute}
    prefix = (node.name or node.output[0]) + "/" + node.op_type + "/"
    names = {}
    for formal, actual in zip(body.input, node.input):
        names[formal] = actual
    for formal in body.input[len(node.input):]:
        names[formal] = ""  # an optional input the caller left out
    for formal, actual in zip(body.output, node.output):
        names[formal] = actual

    def rename(name: str) -> str:
        if name == "":
            return ""
        if name not in names:
            names[name] = prefix + name
        return names[name]

    nodes = []
    for i, n in enumerate(body.node):
        new = onnx.NodeProto()
        new.op_type, new.domain = n.op_type, n.domain
        new.name = f"{prefix}{n.name or n.op_type}_{i}"
        new.input.extend(rename(x) for x in n.input)
        new.output.extend(rename(x) for x in n.output)
        for a in n.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in attrs:
                    copy = onnx.AttributeProto()
                    copy.CopyFrom(attrs[a.ref_attr_name])
                    copy.name = a.name
                    new.attribute.append(copy)
            else:
                new.attribute.append(a)
        nodes.append(new)
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in body.opset_import}
    opsets.setdefault("", opset)
    return nodes, opsets
