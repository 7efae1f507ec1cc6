"""The forward pass of the over-grown network: every candidate of every unit switched on.

The base weights are read, never changed. A unit's producer computes, with one call on
concatenated weights, its neurons z, the candidate directions d = x * (r delta) and the
new neurons' outputs; channel layers run on [z + eps d, z - eps d, new] (2C + m' channels)
with their parameters repeated; the consumer reads the mean of each split pair and the
new neurons scaled by eps. Batch norms use batch statistics and leave running ones alone,
so the base network's loss is the training loss and a grow step changes no state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fireflytui.growth.candidates import WidthCandidates, as_consumer_weight
from fireflytui.models.net import GrowableNet, is_depthwise


def overgrown_forward(
    model: GrowableNet,
    candidates: list[WidthCandidates | None],
    x: torch.Tensor,
    t: float = 1.0,
    observe: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Logits of `model` with each unit's candidates on at t times their fitted eps.

    `observe(index, x)` is called with the input of every batch norm, for statistics.
    """
    producer_of = {u.producer: i for i, u in enumerate(model.units)}
    consumer_of = {u.consumer: i for i, u in enumerate(model.units)}
    active: WidthCandidates | None = None  # the unit whose candidates x carries
    deferred_flatten = False

    for index, layer in enumerate(model.layers):
        x_base = x
        extra_columns = None  # outgoing weights of the new neurons the consumer reads
        if index in consumer_of and active is not None:
            x_base, x, extra_columns = _merge(active, x, t, deferred_flatten)
            active, deferred_flatten = None, False

        if index in producer_of and candidates[producer_of[index]] is not None:
            active = candidates[producer_of[index]]
            x = _produce(layer, active, x_base, x, extra_columns, t)
        elif isinstance(layer, (nn.Conv2d, nn.Linear)) and not is_depthwise(layer):
            weight = layer.weight
            if extra_columns is not None:
                weight = torch.cat([weight, as_consumer_weight(extra_columns, layer)], dim=1)
            x = _dense(layer, x, weight, layer.bias)
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if observe is not None:
                observe(index, x)
            weight, bias = layer.weight, layer.bias
            if active is not None:
                weight, bias = _repeat(active, weight, 1.0), _repeat(active, bias, 0.0)
            x = F.batch_norm(x, None, None, weight, bias, True, 0.0, layer.eps)
        elif is_depthwise(layer):
            weight = layer.weight
            if active is not None:
                identity = torch.zeros_like(weight[:1])
                identity[..., weight.shape[2] // 2, weight.shape[3] // 2] = 1.0
                weight = _repeat(active, weight, identity)
            x = F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, x.shape[1])
        elif isinstance(layer, nn.Flatten) and active is not None:
            deferred_flatten = True
        elif isinstance(layer, (nn.ReLU, nn.ReLU6)):
            x = F.relu(x) if isinstance(layer, nn.ReLU) else F.relu6(x)
        else:
            x = layer(x)
    return x


def _dense(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation)
    return F.linear(x, weight, bias)


def _produce(
    layer: nn.Module,
    cand: WidthCandidates,
    x_base: torch.Tensor,
    x_full: torch.Tensor,
    extra_columns: torch.Tensor | None,
    t: float,
) -> torch.Tensor:
    """[z + eps d, z - eps d, new] from one call on [W; r delta; r_in delta_new]."""
    width = layer.weight.shape[0]
    rows = [layer.weight]
    if cand.num_split:
        shape = (-1, *[1] * (cand.split_delta.dim() - 1))
        rows.append(cand.r_split.view(shape) * cand.split_delta)
    if cand.num_new:
        rows.append(cand.new_incoming())
    weight = torch.cat(rows)  # (C + C_split + m', C_in, ...)
    bias = layer.bias
    if bias is not None:
        bias = torch.cat([bias, bias.new_zeros(weight.shape[0] - width)])

    if extra_columns is None:
        out = _dense(layer, x_full, weight, bias)
    else:
        # The input carries the previous unit's new neurons: only the base rows read them.
        out = _dense(layer, x_base, weight, bias)
        extra = as_consumer_weight(extra_columns, layer)
        out_extra = _dense(layer, x_full[:, x_base.shape[1] :], extra, None)
        out = torch.cat([out[:, :width] + out_extra, out[:, width:]], dim=1)

    z = out[:, :width]
    parts = []
    if cand.num_split:
        eps = (t * cand.split_eps).view(1, -1, *[1] * (out.dim() - 2))
        d = out[:, width : 2 * width]
        parts += [z + eps * d, z - eps * d]
    else:
        parts.append(z)
    if cand.num_new:
        parts.append(out[:, width + cand.num_split :])
    return torch.cat(parts, dim=1)


def _merge(cand: WidthCandidates, x: torch.Tensor, t: float, flatten: bool):
    """Split x into the unit's neurons (mean of each split pair) and its scaled new neurons."""
    width = cand.r_split.numel()
    if cand.num_split:
        base = (x[:, :width] + x[:, width : 2 * width]) / 2
    else:
        base = x[:, :width]
    columns = None
    full = base
    if cand.num_new:
        new = x[:, width + cand.num_split :]
        columns = t * cand.new_outgoing()  # (C', m', k)
        if flatten:
            new = new.flatten(1)
        full = torch.cat([base.flatten(1) if flatten else base, new], dim=1)
    if flatten:
        base = base.flatten(1)
        full = full if cand.num_new else base
    return base, full, columns


def _repeat(cand: WidthCandidates, param: torch.Tensor, fill) -> torch.Tensor:
    """A channel layer's parameter for [neurons, split children, new neurons]."""
    parts = [param]
    if cand.num_split:
        parts.append(param)
    if cand.num_new:
        if isinstance(fill, torch.Tensor):
            parts.append(fill.expand(cand.num_new, *param.shape[1:]))
        else:
            parts.append(param.new_full((cand.num_new, *param.shape[1:]), fill))
    return torch.cat(parts)
