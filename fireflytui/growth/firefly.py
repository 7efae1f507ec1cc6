"""Firefly's search: fit delta and eps on the over-grown network, score every candidate by
its integrated gradient, and keep the eta_t best across the whole network."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fireflytui.growth.apply import UnitGrowth
from fireflytui.growth.candidates import WidthCandidates
from fireflytui.growth.config import GrowthConfig
from fireflytui.growth.overgrown import overgrown_forward
from fireflytui.models import GrowableNet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Candidate:
    """One scored candidate: a split of neuron `index` or the new neuron `index` of a unit."""

    unit: int
    kind: str  # "split" | "new"
    index: int
    score: float  # predicted loss change when switched on (negative: the loss drops)


def make_candidates(
    model: GrowableNet, config: GrowthConfig, generator: torch.Generator
) -> list[WidthCandidates]:
    return [
        WidthCandidates(
            model,
            unit,
            split=config.split,
            new=config.new_candidates if config.new else 0,
            eps_bound=config.eps_bound,
            generator=generator,
        )
        for unit in model.units
    ]


def _loss(model, candidates, batch: Batch, t: float = 1.0) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(overgrown_forward(model, candidates, x, t), y)


def init_new_directions(model, candidates: list[WidthCandidates], batch: Batch) -> None:
    """Point each new neuron's outgoing weights u along the loss's steepest descent.

    With eps at 1 and u at 0 the gradient with respect to u is that of the outgoing weights
    at zero; afterwards eps goes back to 0, so the network's function is unchanged.
    """
    growing = [c for c in candidates if c.num_new]
    if not growing:
        return
    with torch.no_grad():
        for c in growing:
            c.new_eps.fill_(1.0)
            c.new_u.zero_()
    grads = torch.autograd.grad(_loss(model, candidates, batch), [c.new_u for c in growing])
    with torch.no_grad():
        for c, g in zip(growing, grads, strict=True):
            c.new_eps.zero_()
            c.new_u.copy_(-g / g.norm(dim=(0, 2), keepdim=True).clamp_min(1e-12))


def fit(
    model: GrowableNet,
    candidates: list[WidthCandidates],
    batches: list[Batch],
    config: GrowthConfig,
) -> list[float]:
    """Adam on delta, u and eps with the base weights frozen; returns the loss per step."""
    init_new_directions(model, candidates, batches[0])
    groups = [g for c in candidates for g in c.param_groups(config.fit_lr)]
    optimizer = torch.optim.Adam(groups)
    params = [p for g in groups for p in g["params"]]
    losses = []
    for step in range(config.fit_steps):
        loss = _loss(model, candidates, batches[step % len(batches)])
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()
        for c in candidates:
            c.project_()
        losses.append(loss.item())
    return losses


def score(
    model: GrowableNet,
    candidates: list[WidthCandidates],
    batches: list[Batch],
    path_points: int,
) -> list[Candidate]:
    """Integrated gradient of the loss along eps from 0 to its fitted value, times eps.

    All candidates move together along the path; the gradient is averaged at the midpoints
    of `path_points` equal segments and over `batches`. The scores sum to roughly the
    over-grown network's loss change, and each is its candidate's share of it.
    """
    eps = [e for c in candidates for e in c.eps_tensors()]
    directions = [t for c in candidates for t in c.tensors() if not any(t is e for e in eps)]
    total = [torch.zeros_like(e) for e in eps]
    # Only eps needs a gradient here; freezing the directions skips their conv gradients.
    for d in directions:
        d.requires_grad_(False)
    try:
        for k in range(path_points):
            t = (k + 0.5) / path_points
            for batch in batches:
                grads = torch.autograd.grad(_loss(model, candidates, batch, t), eps)
                for acc, g in zip(total, grads, strict=True):
                    acc.add_(g, alpha=1 / t)  # d loss / d(t eps) = (d loss / d eps) / t
    finally:
        for d in directions:
            d.requires_grad_(True)
    n = path_points * len(batches)
    scored = []
    it = iter(total)
    for u, c in enumerate(candidates):
        for kind, e in (("split", c.split_eps), ("new", c.new_eps)):
            if e is None:
                continue
            values = (e.detach() * next(it) / n).tolist()
            scored += [Candidate(u, kind, i, s) for i, s in enumerate(values)]
    return scored


def select(scored: list[Candidate], eta: int) -> list[Candidate]:
    """The eta candidates with the largest predicted loss decrease, across all units."""
    return sorted(scored, key=lambda c: (c.score, c.unit, c.kind, c.index))[:eta]


def to_growths(
    candidates: list[WidthCandidates], chosen: list[Candidate]
) -> list[UnitGrowth | None]:
    """The chosen candidates as per-unit growth, in ascending neuron order."""
    growths: list[UnitGrowth | None] = []
    for u, c in enumerate(candidates):
        split = sorted(x.index for x in chosen if x.unit == u and x.kind == "split")
        new = sorted(x.index for x in chosen if x.unit == u and x.kind == "new")
        if not split and not new:
            growths.append(None)
            continue
        device = c.r_split.device
        split_t = torch.tensor(split, dtype=torch.long, device=device)
        new_t = torch.tensor(new, dtype=torch.long, device=device)
        with torch.no_grad():
            growths.append(
                UnitGrowth(
                    split=split_t,
                    split_offsets=c.split_offsets()[split_t].detach() if c.num_split else None,
                    new_incoming=c.new_incoming()[new_t].detach() if new else None,
                    new_outgoing=c.new_outgoing()[:, new_t].detach() if new else None,
                )
            )
    return growths
