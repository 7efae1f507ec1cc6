"""Apply chosen candidates: widen producers, channel layers and consumers, and carry the
optimizer state and batch-norm running statistics over to the grown network.

Neurons keep their index: a split neuron's first child stays in its place, its second
child and the new neurons are appended in that order. So every tensor of the old network
sits in the top-left corner of its grown counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fireflytui.growth.candidates import consumer_columns
from fireflytui.growth.overgrown import overgrown_forward
from fireflytui.models import GrowableNet, build_model
from fireflytui.models.net import is_depthwise


@dataclass
class UnitGrowth:
    """What one unit gains: which neurons split, with which step, and which new neurons."""

    split: torch.Tensor  # (S,) indices of split neurons, ascending
    split_offsets: torch.Tensor | None  # (S, *fan) step from theta_i to its children
    new_incoming: torch.Tensor | None  # (J, *fan) incoming weights of new neurons
    new_outgoing: torch.Tensor | None  # (C', J, k) consumer columns of new neurons

    @property
    def num_new(self) -> int:
        return 0 if self.new_incoming is None else self.new_incoming.shape[0]

    @property
    def added(self) -> int:
        return self.split.numel() + self.num_new

    def source(self, width: int) -> torch.Tensor:
        """The parent of each grown neuron: itself, the split neuron, or -1 for a new one."""
        keep = torch.arange(width)
        return torch.cat([keep, self.split.cpu(), torch.full((self.num_new,), -1)])


@torch.no_grad()
def grow_model(
    model: GrowableNet, growths: list[UnitGrowth | None], scale: float = 1.0
) -> GrowableNet:
    """A new network with `growths` applied; `scale` multiplies every eps (0 keeps f)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    growths = [g if g is not None and g.added else None for g in growths]
    producer_unit = {u.producer: i for i, u in enumerate(model.units)}
    widths = model.widths()
    offsets = [g.split_offsets if g else None for g in growths]
    incoming = [g.new_incoming if g else None for g in growths]

    # Columns: consumers read half of each split neuron twice, and the new neurons.
    for i, (unit, growth) in enumerate(zip(model.units, growths, strict=True)):
        if growth is None:
            continue
        key = f"layers.{unit.consumer}.weight"
        new_cols = None if growth.new_outgoing is None else scale * growth.new_outgoing
        new = growth.num_new
        state[key] = _grow_columns(state[key], widths[i], growth.split, new_cols, new)
        j = producer_unit.get(unit.consumer)
        if j is not None:
            offsets[j] = _grow_columns(offsets[j], widths[i], growth.split, None, new)
            incoming[j] = _grow_columns(incoming[j], widths[i], growth.split, None, new)

    # Rows: the producer's children at theta +- scale * offset, new neurons appended.
    for i, (unit, growth) in enumerate(zip(model.units, growths, strict=True)):
        if growth is None:
            continue
        key = f"layers.{unit.producer}.weight"
        weight = state[key]
        split = growth.split.to(weight.device)
        rows = [weight]
        if split.numel():
            step = scale * offsets[i]
            rows = [weight.index_add(0, split, step), weight[split] - step]
        if growth.num_new:
            rows.append(incoming[i].to(weight))
        state[key] = torch.cat(rows)
        bias_key = f"layers.{unit.producer}.bias"
        if bias_key in state:
            state[bias_key] = _append(state[bias_key], split, growth.num_new, 0.0)
        for index in unit.chain:
            _grow_channel_layer(
                state, model.layers[index], f"layers.{index}", split, growth.num_new
            )

    new_widths = [w + (g.added if g else 0) for w, g in zip(widths, growths, strict=True)]
    grown = build_model(model.arch.with_widths(new_widths))
    grown.load_state_dict(state)
    return grown.to(next(model.parameters()).device).train(model.training)


def _grow_columns(weight, width, split, new_cols, num_new):
    """Halve split neurons' columns, append their halves, then the new columns (or zeros)."""
    if weight is None:
        return None
    cols = consumer_columns(weight, width)  # (rows, C, k)
    split = split.to(cols.device)
    halves = cols[:, split] / 2
    cols = cols.index_copy(1, split, halves)
    if new_cols is None:
        new_cols = cols.new_zeros(cols.shape[0], num_new, cols.shape[2])
    grown = torch.cat([cols, halves, new_cols.to(cols)], dim=1)  # (rows, C + S + J, k)
    if weight.dim() > 2:
        return grown.reshape(weight.shape[0], grown.shape[1], *weight.shape[2:])
    return grown.reshape(weight.shape[0], grown.shape[1] * grown.shape[2])


def _append(tensor: torch.Tensor, split: torch.Tensor, new: int, fill) -> torch.Tensor:
    fresh = tensor.new_full((new, *tensor.shape[1:]), fill) if not torch.is_tensor(fill) else fill
    return torch.cat([tensor, tensor[split], fresh])


def _grow_channel_layer(state, layer, prefix, split, new) -> None:
    """Children copy their parent's channel parameters; new neurons get neutral ones."""
    if is_depthwise(layer):
        weight = state[f"{prefix}.weight"]
        identity = weight.new_zeros(new, *weight.shape[1:])
        identity[..., weight.shape[2] // 2, weight.shape[3] // 2] = 1.0
        state[f"{prefix}.weight"] = _append(weight, split, new, identity)
        return
    for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        key = f"{prefix}.{name}"
        if key in state:
            state[key] = _append(state[key], split, new, fill)


def carry_optimizer(
    optimizer: torch.optim.Optimizer, model: GrowableNet, grown: GrowableNet
) -> torch.optim.Optimizer:
    """A same-type optimizer over `grown` whose state (e.g. SGD momentum) of every old
    weight is unchanged; entries of new rows and columns start at zero."""
    old_names = {id(p): n for n, p in model.named_parameters()}
    new_params = dict(grown.named_parameters())
    groups = []
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        groups.append(
            {**settings, "params": [new_params[old_names[id(p)]] for p in group["params"]]}
        )
    carried = type(optimizer)(groups, **optimizer.defaults)
    for p, state in optimizer.state.items():
        target = new_params[old_names[id(p)]]
        carried.state[target] = {
            k: _embed(v, target) if torch.is_tensor(v) and v.shape == p.shape else v
            for k, v in state.items()
        }
    return carried


def _embed(old: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    new = torch.zeros_like(like, dtype=old.dtype)
    new[tuple(slice(0, n) for n in old.shape)] = old
    return new


@torch.no_grad()
def calibrate_batch_norm(
    model: GrowableNet,
    grown: GrowableNet,
    growths: list[UnitGrowth | None],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Set the grown batch norms' running statistics so evaluation matches training.

    Each channel keeps its parent's running statistics, moved by the change the grow step
    made to its batch statistics (mean shifted, variance scaled); new channels take their
    batch statistics. With eps at 0 nothing moves, so the function is preserved exactly.
    """
    before, after = _batch_stats(model, batches), _batch_stats(grown, batches)
    if not before:
        return
    source = {}
    for unit, growth in zip(model.units, growths, strict=True):
        width = model.width(unit)
        for index in unit.chain:
            if isinstance(model.layers[index], (nn.BatchNorm1d, nn.BatchNorm2d)) and growth:
                source[index] = growth.source(width)
    for index, (mean_old, var_old) in before.items():
        layer_old, layer_new = model.layers[index], grown.layers[index]
        mean_new, var_new = after[index]
        src = source.get(index, torch.arange(mean_old.numel())).to(mean_new.device)
        has_parent = src >= 0
        parent = src.clamp_min(0)
        running_mean = torch.where(
            has_parent, layer_old.running_mean[parent] + mean_new - mean_old[parent], mean_new
        )
        ratio = var_new / var_old[parent].clamp_min(1e-12)
        running_var = torch.where(has_parent, layer_old.running_var[parent] * ratio, var_new)
        layer_new.running_mean.copy_(running_mean)
        layer_new.running_var.copy_(running_var.clamp_min(0.0))


def _batch_stats(model: GrowableNet, batches) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Mean over batches of each batch norm's batch mean and (unbiased) variance."""
    sums: dict[int, list[torch.Tensor]] = {}

    def observe(index: int, x: torch.Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        stats = [x.mean(dims), x.var(dims, unbiased=True)]
        if index in sums:
            sums[index] = [a + b for a, b in zip(sums[index], stats, strict=True)]
        else:
            sums[index] = stats

    for x, _ in batches:
        overgrown_forward(model, [None] * len(model.units), x, observe=observe)
    return {i: (m / len(batches), v / len(batches)) for i, (m, v) in sums.items()}


def batch_loss(model: GrowableNet, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Training loss on a batch: batch statistics, no running statistics touched."""
    x, y = batch
    with torch.no_grad():
        logits = overgrown_forward(model, [None] * len(model.units), x)
    return float(F.cross_entropy(logits, y))
