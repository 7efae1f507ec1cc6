"""Checkpoints: one safetensors file per save, tensors plus JSON metadata, written atomically.

Tensors: `model.<name>` (weights and buffers), `optimizer.<param>.momentum_buffer`, and the RNG
states `rng.torch`, `rng.cuda.<i>`, `rng.data`. String metadata, each a JSON value: `format`,
`format_version`, `kind`, `architecture`, `config`, `progress` (counters), `settings` (the live
eta/ratio/every/lr), `metrics`, `optimizer` (hyperparameters), `data` (batch order position).
Nothing is ever read with pickle: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from fireflytui.architecture import Architecture

FORMAT = "fireflytui.checkpoint"
FORMAT_VERSION = 1
KINDS = ("epoch", "grow", "user")
_FILE = re.compile(r"^step-(\d+)-(epoch|grow|user)\.safetensors$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with a one-line message for the user."""


def checkpoint_name(step: int, kind: str) -> str:
    """`step-0001234-epoch.safetensors`: the optimizer step it was taken at, and why."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    return f"step-{step:07d}-{kind}.safetensors"


def save_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> int:
    """Writes `tensors` and `meta` (JSON values) to `path` atomically; returns its size in bytes."""
    path = Path(path)
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    header.update({k: json.dumps(v, separators=(",", ":")) for k, v in meta.items()})
    cpu = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    data = save_bytes(cpu, metadata=header)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_durably(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no partial file behind
        raise
    _fsync_dir(path.parent)
    return len(data)


def _write_durably(path: Path, data: bytes) -> None:
    """Writes `data` to a new file at `path` (mode 0600) and forces it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, parsed and checked, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: pass a .safetensors file or a run directory"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {_one_line(e)}); "
            "resume from an earlier one"
        ) from None
    return _parse_metadata(path, raw)


def _parse_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a fireflytui checkpoint")
    try:
        version = int(raw.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path} has no valid format version") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer fireflytui (checkpoint format {version}, this "
            f"version reads up to {FORMAT_VERSION}): upgrade fireflytui"
        )
    meta: dict[str, Any] = {"format_version": version}
    for key, value in raw.items():
        if key in ("format", "format_version"):
            continue
        try:
            meta[key] = json.loads(value)
        except ValueError:
            raise CheckpointError(f"{path} has corrupt metadata ({key!r} is not JSON)") from None
    for key in ("architecture", "config", "progress"):
        if key not in meta:
            raise CheckpointError(f"{path} lacks its {key!r} metadata: not a usable checkpoint")
    return meta


@dataclass
class Checkpoint:
    """A loaded checkpoint: its tensors by name and its parsed metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def architecture(self) -> Architecture:
        return Architecture.from_dict(self.meta["architecture"])

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix.`, with the prefix removed."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a whole checkpoint onto the CPU; any damage is a CheckpointError, never a fallback."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = load_bytes(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {_one_line(e)}); "
            "resume from an earlier one"
        ) from None
    return Checkpoint(path, tensors, meta)


def find_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first by step (then epoch < user < grow at one step)."""
    run_dir = Path(run_dir)
    found = []
    for p in run_dir.iterdir() if run_dir.is_dir() else []:
        m = _FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p.stat().st_mtime_ns, p))
    return [p for *_, p in sorted(found)]


def save_count(path: str | Path) -> int:
    """How many checkpoints the run had written when it wrote `path` (0 if unreadable)."""
    try:
        return int(read_metadata(path)["progress"].get("saves", 0))
    except (CheckpointError, KeyError, TypeError, ValueError):
        return 0


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint saved last in `run_dir`, by the save counter in its metadata."""
    files = find_checkpoints(run_dir)
    if not files:
        raise CheckpointError(f"{run_dir} holds no checkpoint (step-*.safetensors) to resume from")
    best, best_key = None, None
    for path in files:
        meta = read_metadata(path)
        progress = meta["progress"]
        key = (int(progress.get("saves", 0)), int(progress.get("step", 0)))
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


def resolve_checkpoint(target: str | Path) -> Path:
    """A `--resume` argument: a checkpoint file, or a run directory (its latest checkpoint)."""
    target = Path(target).expanduser()
    if target.is_dir():
        return latest_checkpoint(target)
    if not target.exists():
        raise CheckpointError(f"no checkpoint or run directory at {target}")
    return target


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained network of a checkpoint (or a run directory's latest), in eval mode."""
    from fireflytui.models import build_model

    checkpoint = load_checkpoint(resolve_checkpoint(path))
    model = build_model(checkpoint.architecture)
    model.load_state_dict(checkpoint.group("model"))
    return model.to(device).eval()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:160] or type(error).__name__
