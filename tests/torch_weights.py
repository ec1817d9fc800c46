"""Deterministic weights at a trained network's scale for the corpus's torch models
(tests/models.py, bench/models.py): He-initialised convolutions and linears, non-trivial norm
parameters, batch-norm statistics from real activations, visible layer scales."""

from __future__ import annotations

import numpy as np


def init_conv_linear(model) -> None:
    """He init for conv/linear (torchvision-style), so activations keep their scale."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.05)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0 / np.sqrt(m.in_features))
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.05)


def randomize_norms(model) -> None:
    """Non-trivial affine parameters for every norm layer (defaults are 1 and 0)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(1234)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)) or \
                type(m).__name__.endswith("LayerNorm"):
            w = getattr(m, "weight", None)
            b = getattr(m, "bias", None)
            with torch.no_grad():
                if isinstance(w, torch.Tensor) and w.dim() >= 1:
                    w.copy_(0.75 + 0.5 * torch.rand(w.shape, generator=g))
                if isinstance(b, torch.Tensor) and b.dim() >= 1:
                    b.copy_(0.1 * torch.randn(b.shape, generator=g))


def calibrate_bn(model, example, batches: int = 2) -> None:
    """Give BatchNorm layers running statistics from real activations (cumulative averages
    over a few random batches) so the eval-mode network is well scaled, as a trained one is."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn((4,) + tuple(example.shape[1:]), generator=g)
            model(x)
    model.eval()
    for m in bns:
        m.momentum = 0.1


def randomize_layer_scale(model, lo: float = 0.2, hi: float = 0.8) -> None:
    """ConvNeXt-style layer-scale parameters start at 1e-6, which hides the residual branch."""
    import torch

    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name or name.endswith("lambda1") or name.endswith("gamma"):
                if p.dim() == 1:
                    p.copy_(lo + (hi - lo) * torch.rand(p.shape, generator=g))
