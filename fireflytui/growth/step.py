"""One grow step: search with the configured method, apply, measure, report."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from fireflytui.growth import firefly
from fireflytui.growth.apply import (
    UnitGrowth,
    batch_loss,
    calibrate_batch_norm,
    carry_optimizer,
    grow_model,
)
from fireflytui.growth.candidates import row_norms, unit_rows
from fireflytui.growth.config import GrowthConfig
from fireflytui.growth.report import GrowReport, UnitReport
from fireflytui.models import GrowableNet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class GrowResult:
    model: GrowableNet  # the grown network (a new module; the input is left unchanged)
    optimizer: torch.optim.Optimizer | None  # carries the old momentum, if one was given
    report: GrowReport


def grow_step(
    model: GrowableNet,
    batches: Iterable[Batch],
    eta: int,
    config: GrowthConfig | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    held: Batch | None = None,
    seed: int = 0,
    scale: float = 1.0,
) -> GrowResult:
    """Grow `model` by exactly `eta` neurons with `config.method`.

    At most `config.batches` training batches are read from `batches`; the loss change is
    measured on `held` or, if not given, on the next batch after them. `scale` multiplies
    every fitted eps before it is applied (0 keeps the network's function).
    """
    config = config or GrowthConfig()
    start = time.perf_counter()
    if eta < 0:
        raise ValueError(f"eta must be >= 0 neurons, got {eta}")
    method = "none" if eta == 0 else config.method
    sample = list(itertools.islice(iter(batches), config.batches + (held is None)))
    if not sample:
        raise ValueError("a grow step needs at least one training batch")
    if held is None:
        held = sample.pop() if len(sample) > 1 else sample[0]
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    loss_before = batch_loss(model, held)

    scored: dict[tuple[int, str, int], float] = {}
    fit_losses: list[float] = []
    predicted = None
    if method == "firefly":
        growths, chosen, fit_losses = _firefly(model, sample, eta, config, generator)
        scored = {(c.unit, c.kind, c.index): c.score for c in chosen}
        predicted = sum(c.score for c in chosen)
    elif method == "random":
        growths = _random(model, eta, config.noise, generator)
    else:
        growths = [None] * len(model.units)

    grown = grow_model(model, growths, scale) if method != "none" else model
    if grown is not model:
        calibrate_batch_norm(model, grown, growths, sample)
    loss_after = batch_loss(grown, held)
    model.train(was_training)
    grown.train(was_training)
    carried = optimizer
    if optimizer is not None and grown is not model:
        carried = carry_optimizer(optimizer, model, grown)

    report = GrowReport(
        method=method,
        eta=sum(g.added for g in growths if g is not None),
        seconds=time.perf_counter() - start,
        params_before=model.num_params(),
        params_after=grown.num_params(),
        predicted_loss_change=predicted,
        measured_loss_change=loss_after - loss_before,
        loss_before=loss_before,
        loss_after=loss_after,
        units=_unit_reports(model, grown, growths, scored),
        fit_losses=fit_losses,
    )
    return GrowResult(grown, carried, report)


def _firefly(model, sample, eta, config, generator):
    candidates = firefly.make_candidates(model, config, generator)
    available = sum(c.num_split + c.num_new for c in candidates)
    if eta > available:
        raise ValueError(
            f"eta_t = {eta} neurons exceeds the {available} candidates; lower eta or raise "
            "growth.new_candidates"
        )
    # Fit on one half of the sample and score on the other, so that a candidate that only
    # fits its own batches scores nothing.
    half = max(1, len(sample) // 2)
    fit_batches, score_batches = sample[:half], sample[half:] or sample
    fit_losses = firefly.fit(model, candidates, fit_batches, config)
    scored = firefly.score(model, candidates, score_batches, config.path_points)
    chosen = firefly.select(scored, eta)
    return firefly.to_growths(candidates, chosen), chosen, fit_losses


@torch.no_grad()
def _random(model: GrowableNet, eta: int, noise: float, generator: torch.Generator):
    """Net2Net-style: split eta neurons drawn uniformly from the whole network, each child
    pair offset by +-noise times the neuron's weight norm in a random direction."""
    widths = model.widths()
    total = sum(widths)
    if eta > total:
        raise ValueError(f"eta_t = {eta} neurons exceeds the {total} neurons to split")
    picks = torch.randperm(total, generator=generator)[:eta].sort().values
    bounds = torch.tensor([0, *itertools.accumulate(widths)])
    growths: list[UnitGrowth | None] = []
    for u, unit in enumerate(model.units):
        split = picks[(picks >= bounds[u]) & (picks < bounds[u + 1])] - bounds[u]
        if split.numel() == 0:
            growths.append(None)
            continue
        producer = model.layers[unit.producer].weight
        split = split.to(producer.device)
        weight = producer[split]
        direction = unit_rows(torch.randn(weight.shape, generator=generator).to(weight))
        scale = noise * row_norms(weight).view(-1, *[1] * (weight.dim() - 1))
        growths.append(UnitGrowth(split, scale * direction, None, None))
    return growths


def _unit_reports(model, grown, growths, scored) -> list[UnitReport]:
    reports = []
    for u, (unit, growth) in enumerate(zip(model.units, growths, strict=True)):
        split = growth.split.tolist() if growth else []
        new = growth.num_new if growth else 0
        new_keys = sorted(k for k in scored if k[0] == u and k[1] == "new")
        reports.append(
            UnitReport(
                name=unit.name,
                width_before=model.width(unit),
                width_after=grown.width(grown.units[u]),
                split=split,
                new=new,
                split_scores=[scored[(u, "split", i)] for i in split if (u, "split", i) in scored],
                new_scores=[scored[k] for k in new_keys],
            )
        )
    return reports
