"""`slimc.prune`: a sparse or smaller model without another library.

``magnitude`` zeros the smallest weights (unstructured, in blocks, or N:M) and leaves the
shapes alone: the `sparsify` pass then turns the zeros into speed. ``channels`` removes whole
output channels and follows the removal through the graph, giving a smaller dense model.
Neither makes a claim about accuracy (that needs fine-tuning, outside a compiler); the claim
is that the result computes what the pruned weights say. Both take anything `compile` takes
and return a `slimc.Graph` (with ``report=True``, the graph and a per-layer report).
"""

from __future__ import annotations

from typing import Optional, Sequence

from slimc.compiler import simplified_graph


def magnitude(model, sparsity: float, pattern: str = "unstructured",
              layers: Optional[Sequence[str]] = None, scope: str = "layer", report: bool = False):
    """Zero the fraction `sparsity` of the weights of each conv / matmul / gemm with constant
    weights (``scope="layer"``), or the smallest over all of them (``scope="global"``).
    `pattern`: "unstructured", "block:RxC" (e.g. "block:1x8": whole blocks are zeroed, by
    their L1 norm) or "n:m:N:M" (e.g. "n:m:2:4": N of every M consecutive weights along the
    input dimension kept). `layers`: names of the layers' outputs or weights (default all)."""
    from slimc.passes.prune_magnitude import prune_magnitude

    graph, rep = prune_magnitude(simplified_graph(model), sparsity, pattern=pattern,
                                 layers=layers, scope=scope)
    return (graph, rep) if report else graph


def channels(model, ratio: float, criterion: str = "l1",
             layers: Optional[Sequence[str]] = None, report: bool = False):
    """Remove the fraction `ratio` of output channels of each prunable convolution / gemm /
    matmul (channels tied together through adds count as one group, ranked by `criterion`,
    "l1" or "l2" of the group's weights) and follow the removal through the graph. Channels on
    the path to a graph output stay, so the output shape is the model's."""
    from slimc.passes.prune_channels import prune_channels

    graph, rep = prune_channels(simplified_graph(model), ratio, criterion=criterion,
                                layers=layers)
    return (graph, rep) if report else graph
