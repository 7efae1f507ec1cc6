"""The candidates of one unit: a split for every neuron and m' new neurons.

A split candidate i turns neuron i (incoming weights theta_i) into two neurons with
incoming weights theta_i +- eps_i * r_i * delta_i that each carry half of i's outgoing
weights; r_i = ||theta_i||, so eps is a relative step and one bound fits every layer.
A new-neuron candidate j has incoming weights r_in * delta_j and outgoing weights
eps_j * r_out * u_j, where r_in and r_out are the mean incoming and outgoing weight norms
of the unit's neurons. ||delta|| <= 1, ||u|| <= 1 and 0 <= eps <= eps_bound throughout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fireflytui.models.net import GrowableNet, Unit


class WidthCandidates:
    """Split and new-neuron candidates of one unit, and their fitted delta, u and eps."""

    def __init__(
        self,
        model: GrowableNet,
        unit: Unit,
        *,
        split: bool,
        new: int,
        eps_bound: float,
        generator: torch.Generator,
    ):
        self.unit = unit
        self.eps_bound = eps_bound
        producer = model.layers[unit.producer]
        consumer = model.layers[unit.consumer]
        weight = producer.weight.detach()  # (C, C_in, kh, kw) or (C, in_features)
        width = weight.shape[0]
        device, dtype = weight.device, weight.dtype

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

        self.r_split = row_norms(weight).clamp_min(1e-12)  # (C,)
        self.r_in = float(self.r_split.mean())
        self.consumer_cols = consumer_columns(consumer.weight.detach(), width)  # (C', C, k)
        self.r_out = float(self.consumer_cols.flatten(2).norm(dim=(0, 2)).mean().clamp_min(1e-12))

        self.split_delta = self.split_eps = None
        if split:
            self.split_delta = unit_rows(rand(*weight.shape))
            self.split_eps = torch.full((width,), eps_bound / 2, dtype=dtype, device=device)
        self.new_delta = self.new_u = self.new_eps = None
        if new > 0:
            self.new_delta = unit_rows(rand(new, *weight.shape[1:]))
            cols = self.consumer_cols
            self.new_u = torch.zeros(cols.shape[0], new, cols.shape[2], dtype=dtype, device=device)
            self.new_eps = torch.zeros(new, dtype=dtype, device=device)
        for tensor in self.tensors():
            tensor.requires_grad_(True)

    @property
    def num_split(self) -> int:
        return 0 if self.split_eps is None else self.split_eps.numel()

    @property
    def num_new(self) -> int:
        return 0 if self.new_eps is None else self.new_eps.numel()

    def tensors(self) -> list[torch.Tensor]:
        names = ("split_delta", "split_eps", "new_delta", "new_u", "new_eps")
        return [t for t in (getattr(self, n) for n in names) if t is not None]

    def eps_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.split_eps, self.new_eps) if t is not None]

    def param_groups(self, lr: float) -> list[dict]:
        """Adam groups: eps moves in units of its bound, directions in units of 1."""
        groups = [{"params": self.eps_tensors(), "lr": lr * self.eps_bound}]
        for t in (self.split_delta, self.new_delta, self.new_u):
            if t is not None:
                fan = t[0].numel() if t is not self.new_u else t[:, 0].numel()
                groups.append({"params": [t], "lr": lr / math.sqrt(fan)})
        return groups

    @torch.no_grad()
    def project_(self) -> None:
        """Put delta and u back in the unit ball and eps in [0, eps_bound]."""
        for eps in self.eps_tensors():
            eps.clamp_(0.0, self.eps_bound)
        for delta in (self.split_delta, self.new_delta):
            if delta is not None:
                delta.div_(row_norms(delta).clamp_min(1.0).view(-1, *[1] * (delta.dim() - 1)))
        if self.new_u is not None:
            norms = self.new_u.norm(dim=(0, 2)).clamp_min(1.0)
            self.new_u.div_(norms.view(1, -1, 1))

    def split_offsets(self) -> torch.Tensor:
        """eps_i * r_i * delta_i for every neuron: the step from theta_i to its children."""
        shape = (-1, *[1] * (self.split_delta.dim() - 1))
        return (self.split_eps * self.r_split).view(shape) * self.split_delta

    def new_incoming(self) -> torch.Tensor:
        return self.r_in * self.new_delta

    def new_outgoing(self) -> torch.Tensor:
        """eps_j * r_out * u_j as consumer columns, (C', m', k)."""
        return self.new_eps.view(1, -1, 1) * self.r_out * self.new_u


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.flatten(1).norm(dim=1)


def unit_rows(weight: torch.Tensor) -> torch.Tensor:
    return weight / row_norms(weight).clamp_min(1e-12).view(-1, *[1] * (weight.dim() - 1))


def consumer_columns(weight: torch.Tensor, width: int) -> torch.Tensor:
    """A consumer's weights grouped by the producer neuron they read: (C', width, k).

    k is the kernel size for a conv consumer and the number of spatial positions per
    channel for a linear consumer that reads a flattened feature map.
    """
    return weight.reshape(weight.shape[0], width, math.prod(weight.shape[1:]) // width)


def as_consumer_weight(columns: torch.Tensor, like: nn.Module) -> torch.Tensor:
    """Reshape (C', n, k) columns back to the consumer's weight layout."""
    if isinstance(like, nn.Conv2d):
        return columns.reshape(columns.shape[0], columns.shape[1], *like.kernel_size)
    return columns.reshape(columns.shape[0], -1)
