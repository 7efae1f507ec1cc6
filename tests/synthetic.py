"""Small deterministic data and partly trained networks for the growth tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fireflytui import build_model, default_architecture


def templates_dataset(n: int, seed: int, shape=(3, 16, 16), classes: int = 10):
    """Class templates (smooth random images) plus noise: learnable but not trivially."""
    g = torch.Generator().manual_seed(1234)
    coarse = torch.randn(classes, shape[0], 4, 4, generator=g)
    templates = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)
    g.manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = templates[y] + 4.0 * torch.randn(n, *shape, generator=g)
    return x, y


def batches_of(x, y, size: int):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x) - size + 1, size)]


def trained(name: str, width: int, steps: int, seed: int = 0, shape=(3, 16, 16), lr=0.05):
    """A network of family `name` after `steps` SGD steps on the templates task."""
    torch.manual_seed(seed)
    arch = default_architecture(name, input_shape=shape, width=width)
    model = build_model(arch)
    x, y = templates_dataset(64 * steps, seed, shape)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    model.train()
    for xb, yb in batches_of(x, y, 64):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model, opt
