"""The trainer: SGD with grow steps, the event log, live control, checkpoints and resume.

One `Trainer` owns one run directory. It trains with Nesterov SGD under a cosine learning-rate
cycle that restarts after every grow step (the paper retrains after each growth), evaluates after
every epoch, and grows every `growth.every` epochs. Commands from the control channel are applied
at step boundaries. A resumed run continues bit for bit: weights, momentum, RNG states, the batch
order position and the epoch's running sums all come back from the checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fireflytui.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_name,
    find_checkpoints,
    latest_checkpoint,
    save_checkpoint,
    save_count,
)
from fireflytui.config import Config
from fireflytui.control import ControlServer, Request
from fireflytui.data import Batches, Dataset, load_dataset
from fireflytui.events import EVENTS_NAME, EventLog
from fireflytui.growth import GrowthConfig, grow_step
from fireflytui.models import GrowableNet, build_model, default_architecture
from fireflytui.settings import COMMANDS, LiveSettings, SettingError

Callback = Callable[[dict[str, Any]], None]


class TrainingError(Exception):
    """The run cannot go on; the message says why in one line."""


@dataclass
class Progress:
    """The counters a checkpoint carries, enough to continue exactly where a run stopped."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    epoch_step: int = 0  # steps taken in the current epoch
    round: int = 0  # grow steps done, scheduled and forced
    scheduled: int = 0  # grow steps done on schedule
    last_grow_epoch: int = 0  # the epoch count at the last scheduled grow step
    cycle_start: int = 0  # the step the current learning-rate cycle began at
    saves: int = 0  # checkpoints written
    loss_sum: float = 0.0  # this epoch so far: summed training loss over images
    correct: int = 0  # this epoch so far: correctly classified training images
    images: int = 0  # this epoch so far: training images seen
    best_acc: float = 0.0  # best test accuracy so far


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed for one purpose, independent of every other purpose's seed."""
    text = ":".join(str(p) for p in (seed, *purpose)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(
            f"train.device={name} but CUDA is not available here: use --set train.device=cpu"
        )
    return torch.device(name)


def growth_config(config: Config) -> GrowthConfig:
    """The grow-step fields of the `growth` section."""
    section = asdict(config.growth)
    return GrowthConfig(**{f.name: section[f.name] for f in fields(GrowthConfig)})


class Trainer:
    """Trains and grows one network in one run directory; `run()` returns the final status."""

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        *,
        resume: Checkpoint | None = None,
        on_event: Callback | None = None,
        dataset: Dataset | None = None,
        control: bool = True,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.on_event = on_event
        self.resumed_from = str(resume.path) if resume is not None else None
        train = config.train
        if train.threads:
            torch.set_num_threads(train.threads)
        self.device = resolve_device(train.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormal gradients otherwise slow CPU epochs ~3x
        torch.manual_seed(train.seed)

        data = config.data
        self.dataset = dataset or load_dataset(
            data.source,
            data.dir or None,
            seed=train.seed,
            train_subset=data.train_subset or None,
            test_subset=data.test_subset or None,
        )
        self.train_batches = self.dataset.batches(
            True, data.batch_size, device=self.device, seed=train.seed, augment=data.augment
        )
        self.test_batches = self.dataset.batches(False, 512, device=self.device)
        self.steps_per_epoch = len(self.train_batches)

        if resume is not None:
            arch = resume.architecture
            if (arch.num_classes, tuple(arch.input_shape)) != (
                self.dataset.num_classes,
                tuple(self.dataset.input_shape),
            ):
                raise TrainingError(
                    f"the checkpoint's network takes {tuple(arch.input_shape)} images in "
                    f"{arch.num_classes} classes but {data.source} has "
                    f"{tuple(self.dataset.input_shape)} in {self.dataset.num_classes}: "
                    "resume with the data it was trained on"
                )
        else:
            model = config.model
            arch = default_architecture(
                model.name,
                num_classes=self.dataset.num_classes,
                input_shape=self.dataset.input_shape,
                width=model.width or None,
                widths=list(model.widths) or None,
                depth=model.depth,
            )
        self.model = build_model(arch).to(self.device)
        self.optimizer = self._make_optimizer(self.model)
        self._set_layout()
        self.growth = growth_config(config)
        self.settings = LiveSettings(
            eta=config.growth.eta, ratio=config.growth.ratio, every=config.growth.every, lr=train.lr
        )
        self.progress = Progress()
        self.state = "running"
        self.metrics: dict[str, Any] = {}
        if resume is not None:
            self._restore(resume)

        self._grow_requested: Request | None = None
        self._stop_requested: Request | None = None
        self._interrupted = False
        self._end_note: str | None = None  # why a stopped run ended without its checkpoint
        self._pending_status: str | None = None
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self._window = _Window()
        self.events = EventLog(self.run_dir / EVENTS_NAME)
        self.control = ControlServer(self.run_dir) if control else None

    def _make_optimizer(self, model: GrowableNet) -> torch.optim.SGD:
        train = self.config.train
        return torch.optim.SGD(
            model.parameters(),
            lr=train.lr,
            momentum=train.momentum,
            nesterov=train.momentum > 0,
            weight_decay=train.weight_decay,
        )

    def _set_layout(self) -> None:
        """Puts conv weights and their momentum in the configured memory layout, in place."""
        if not self.config.train.channels_last:
            return
        self.model.to(memory_format=torch.channels_last)  # keeps the Parameter objects
        for p in self.model.parameters():
            state = self.optimizer.state.get(p, {})
            if p.dim() == 4 and "momentum_buffer" in state:
                state["momentum_buffer"] = state["momentum_buffer"].contiguous(
                    memory_format=torch.channels_last
                )

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory layout the network's convs run fastest on."""
        if self.config.train.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def effective_config(self) -> Config:
        """The config with the live settings folded in: what a resumed run continues with."""
        s = self.settings
        return self.config.with_overrides(
            [f"growth.eta={s.eta}", f"growth.ratio={s.ratio!r}", f"growth.every={s.every}"]
            + [f"train.lr={s.lr!r}"]
        )

    # Events and state

    def emit(self, type: str, *, sync: bool = False, **fields: Any) -> dict[str, Any]:
        event = self.events.emit(type, sync=sync, **fields)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.emit("state", state=state)

    # The run

    def run(self) -> str:
        """Trains to the end, a stop command or a failure; returns finished|stopped|failed."""
        status, error = "failed", None
        try:
            if self.control is not None:
                self.control.start()
            self._emit_start()
            status = self._loop()
        except TrainingError as e:
            error = str(e)
        except KeyboardInterrupt:
            error = "interrupted (Ctrl-C); resume with --resume " + str(self.run_dir)
        except Exception as e:  # noqa: BLE001 - any crash ends the run as failed, with its reason
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            if status != "finished" and status != "stopped":
                status = "failed"
            if status == "stopped" and error is None:
                error = self._end_note
            self._set_state(status)
            self.emit("end", status=status, error=error, sync=True)
            if self.control is not None:
                self.control.close()
            self.events.close()
        return status

    def _emit_start(self) -> None:
        self.emit(
            "start",
            config=self.config.to_dict(),
            architecture=self._architecture(),
            params=self.model.num_params(),
            pid=os.getpid(),
            resumed_from=self.resumed_from,
            device=str(self.device),
            epochs=self.config.train.epochs,
            steps_per_epoch=self.steps_per_epoch,
            progress=asdict(self.progress),
            settings=self.settings.to_dict(),
            data={
                "source": self.dataset.source,
                "train_images": len(self.dataset.train),
                "test_images": len(self.dataset.test),
                "classes": self.dataset.num_classes,
            },
            sync=True,
        )
        self.emit("state", state=self.state)

    def _architecture(self) -> dict[str, Any]:
        arch = self.model.arch.to_dict()
        units = [{"name": u.name, "width": self.model.width(u)} for u in self.model.units]
        return {**arch, "units": units}

    def _loop(self) -> str:
        epochs = self.config.train.epochs
        if self.progress.epoch_step >= self.steps_per_epoch:
            self._end_epoch()  # saved after an epoch's last step but before its evaluation
        while True:
            if self._boundary():
                return "stopped"
            if self.progress.epoch >= epochs:
                return "finished"
            if self._scheduled_grow_due():
                self._grow("schedule")
                continue  # a boundary after the grow step's checkpoint
            self._train_epoch()
            if self._interrupted:
                return "stopped"
            self._end_epoch()

    def _train_epoch(self) -> None:
        progress, last = self.progress, self.steps_per_epoch
        self._loss_sum.fill_(progress.loss_sum)
        self._correct.fill_(progress.correct)
        self._window.start()
        epoch_start = time.perf_counter()
        for x, y in self.train_batches:
            self._train_step(x, y)
            if progress.step % self.config.train.log_every == 0:
                self._log_train()
            if progress.epoch_step < last and self._boundary():
                return
        self.metrics["seconds"] = time.perf_counter() - epoch_start - self._window.excluded_total

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        logits = self.model(self._input(x))
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        n = y.shape[0]
        loss = loss.detach()
        correct = (logits.detach().argmax(1) == y).sum()
        self._loss_sum += loss.double() * n
        self._correct += correct
        self._window.add(n, loss, correct)
        progress = self.progress
        progress.step += 1
        progress.epoch_step += 1
        progress.images += n

    def _sync_sums(self) -> None:
        """Copies the on-device running sums into the progress counters (one device sync)."""
        self.progress.loss_sum = float(self._loss_sum.item())
        self.progress.correct = int(self._correct.item())
        if not math.isfinite(self.progress.loss_sum):
            raise TrainingError(
                f"the training loss became {self.progress.loss_sum} at step "
                f"{self.progress.step}; the last good checkpoint is kept: resume from it "
                "with a lower train.lr"
            )

    def _log_train(self) -> None:
        loss, acc, rate = self._window.read()
        self._sync_sums()
        self.emit(
            "train",
            epoch=self.progress.epoch + 1,
            step=self.progress.step,
            loss=loss,
            acc=acc,
            lr=self.learning_rate(),
            images_per_second=rate,
        )

    def _end_epoch(self) -> None:
        self._sync_sums()
        progress = self.progress
        train_loss = progress.loss_sum / max(1, progress.images)
        train_acc = progress.correct / max(1, progress.images)
        images = progress.images
        test_loss, test_acc = self.evaluate()
        progress.epoch += 1
        progress.epoch_step = 0
        progress.loss_sum, progress.correct, progress.images = 0.0, 0, 0
        self._loss_sum.zero_()
        self._correct.zero_()
        progress.best_acc = max(progress.best_acc, test_acc)
        seconds = self.metrics.get("seconds", 0.0)
        self.metrics = {
            "epoch": progress.epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "best_acc": progress.best_acc,
        }
        self.emit(
            "epoch",
            epoch=progress.epoch,
            step=progress.step,
            seconds=seconds,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            params=self.model.num_params(),
            images=images,
            images_per_second=images / seconds if seconds > 0 else None,
            lr=self.learning_rate(),
            widths=self.model.widths(),
            best_acc=progress.best_acc,
        )
        self.save("epoch")

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy, in eval mode (batch-norm running statistics)."""
        self.model.eval()
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for x, y in self.test_batches:
            logits = self.model(self._input(x))
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
        self.model.train()
        n = max(1, len(self.dataset.test))
        return float(loss.item()) / n, int(correct.item()) / n

    # Learning rate and growth schedule

    def learning_rate(self) -> float:
        """The cosine cycle from the last grow step to the next scheduled one (or the end)."""
        base = self.settings.lr
        if self.config.train.schedule == "constant":
            return base
        start = self.progress.cycle_start
        end = self._next_grow_epoch() * self.steps_per_epoch
        t = min(1.0, (self.progress.step - start) / max(1, end - start))
        return base * 0.5 * (1.0 + math.cos(math.pi * t))

    def _next_grow_epoch(self) -> int:
        """The epoch count at which the next scheduled grow step comes, or train.epochs."""
        epochs, growth, every = self.config.train.epochs, self.config.growth, self.settings.every
        if growth.method == "none" or self.progress.scheduled >= growth.rounds:
            return epochs
        if growth.max_params and self.model.num_params() >= growth.max_params:
            return epochs
        progress = self.progress
        after = progress.epoch + (progress.last_grow_epoch >= progress.epoch)
        after = max(after, 1)
        due = -(-after // every) * every  # the first multiple of `every` at or after `after`
        return min(due, epochs)

    def _scheduled_grow_due(self) -> bool:
        progress = self.progress
        return (
            0 < progress.epoch < self.config.train.epochs
            and progress.last_grow_epoch < progress.epoch
            and self._next_grow_epoch() == progress.epoch
        )

    def eta(self) -> int:
        """eta_t for the next grow step: growth.eta if set, else ratio x current neurons."""
        if self.settings.eta > 0:
            return min(self.settings.eta, self._max_eta())
        return max(1, round(self.settings.ratio * sum(self.model.widths())))

    def _max_eta(self) -> int:
        """The most neurons one grow step can add: its candidates."""
        if self.growth.method == "firefly":
            split = sum(self.model.widths()) if self.growth.split else 0
            new = len(self.model.units) * self.growth.new_candidates if self.growth.new else 0
            return split + new
        return sum(self.model.widths())

    def _grow(self, trigger: str) -> dict[str, Any]:
        """One grow step; a failure leaves the network as it was and is reported, not raised."""
        progress, previous = self.progress, self.state
        self._set_state("growing")
        excluded = time.perf_counter()
        eta = self.eta()
        round_ = progress.round + 1
        params_before = self.model.num_params()
        sample = self._grow_sample(round_)
        try:
            result = grow_step(
                self.model,
                sample,
                eta if self.growth.method != "none" else 0,
                self.growth,
                optimizer=self.optimizer,
                seed=derive_seed(self.config.train.seed, "grow", round_),
            )
        except Exception as e:  # noqa: BLE001 - grow_step leaves the given network untouched
            reason = (
                str(e) if isinstance(e, (ValueError, RuntimeError)) else f"{type(e).__name__}: {e}"
            )
            self._window.exclude(time.perf_counter() - excluded)
            event = self._emit_grow(
                trigger,
                round=progress.round,
                method=self.growth.method,
                eta=eta,
                seconds=time.perf_counter() - excluded,
                params_before=params_before,
                params_after=params_before,
                predicted_loss_change=None,
                measured_loss_change=None,
                units=[],
                error=f"the grow step failed and the network is unchanged: {reason}",
            )
            if trigger == "schedule":
                progress.last_grow_epoch = progress.epoch
            self._set_state(previous)
            return event
        self.model, self.optimizer = result.model, result.optimizer
        self._set_layout()
        progress.round = round_
        if trigger == "schedule":
            progress.scheduled += 1
            progress.last_grow_epoch = progress.epoch
        progress.cycle_start = progress.step
        report = asdict(result.report)
        for key in ("loss_before", "loss_after", "fit_losses"):  # details the log leaves out
            del report[key]
        event = self._emit_grow(trigger, round=round_, **report, error=None, sync=True)
        self.save("grow")
        self._window.exclude(time.perf_counter() - excluded)
        self._set_state(previous)
        return event

    def _emit_grow(self, trigger: str, *, sync: bool = False, **report: Any) -> dict[str, Any]:
        """The `grow` event: the report's fields, and where and why the step ran."""
        progress = self.progress
        return self.emit(
            "grow", epoch=progress.epoch, step=progress.step, trigger=trigger, sync=sync, **report
        )

    def _grow_sample(self, round_: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches a grow step reads: a fixed draw per round, so resume repeats it."""
        size = self.config.data.batch_size
        count = min(len(self.dataset.train), (self.growth.batches + 1) * size)
        split = self.dataset.train.subset(count, seed=derive_seed(self.config.train.seed, round_))
        batches = Batches(
            split,
            size,
            device=self.device,
            mean=self.dataset.mean,
            std=self.dataset.std,
            train=True,
            seed=derive_seed(self.config.train.seed, "grow-batches", round_),
            augment=self.config.data.augment,
        )
        return list(batches)

    # Control

    @property
    def stopping(self) -> bool:
        return self._interrupted

    def request_stop(self) -> None:
        """Stops at the next step boundary, with a checkpoint (a signal handler may call it)."""
        self._interrupted = True

    def _boundary(self) -> bool:
        """Applies waiting commands (and waits while paused); True when the run must stop."""
        if self._interrupted:
            self._stop(None)
            return True
        if self.control is None:
            return False
        requests = self.control.poll()
        if not requests and self.state != "paused":
            return False
        started = time.perf_counter()
        while True:
            for request in requests:
                self._handle(request)
            if self._stop_requested is not None:
                request, self._stop_requested = self._stop_requested, None
                self._stop(request)
                if self._interrupted:  # not when its checkpoint could not be written
                    return True
            if self._grow_requested is not None:
                request, self._grow_requested = self._grow_requested, None
                event = self._grow("user")
                self._acknowledge(
                    request, event["error"] is None, event["error"], round=event["round"]
                )
            if self.state != "paused":
                break
            requests = self.control.wait(0.5)
        self._window.exclude(time.perf_counter() - started)
        return False

    def _handle(self, request: Request) -> None:
        command, args = request.command, request.args
        if command not in COMMANDS:
            self._acknowledge(
                request, False, f"unknown command {command!r}; commands: {', '.join(COMMANDS)}"
            )
        elif command != "set" and args:
            self._acknowledge(request, False, f"{command} takes no arguments")
        elif command == "pause":
            self._set_state("paused")
            self._acknowledge(request, True, state=self.state)
        elif command == "continue":
            self._set_state("running")
            self._acknowledge(request, True, state=self.state)
        elif command == "grow":
            if self.growth.method == "none":
                self._acknowledge(request, False, "growth.method is none: nothing to grow")
            elif self._grow_requested is not None:
                self._acknowledge(request, False, "a grow step is already waiting")
            else:
                self._grow_requested = request  # acknowledged once it is done
        elif command == "checkpoint":
            event = self.save("user")
            if event["error"] is None:
                self._acknowledge(request, True, path=event["path"])
            else:
                self._acknowledge(request, False, event["error"])
        elif command == "stop":
            self._stop_requested = request
        elif command == "set":
            try:
                self.settings = self.settings.updated(args, max_eta=self._max_eta())
            except SettingError as e:
                self._acknowledge(request, False, str(e))
            else:
                self._acknowledge(request, True, settings=self.settings.to_dict())
        elif command == "status":
            self._acknowledge(
                request,
                True,
                state=self.state,
                epoch=self.progress.epoch,
                step=self.progress.step,
                round=self.progress.round,
                settings=self.settings.to_dict(),
            )

    def _acknowledge(self, request: Request, ok: bool, error: str | None = None, **fields) -> None:
        step = self.progress.step
        self.emit(
            "control",
            command=request.command,
            args=request.args,
            ok=ok,
            error=error,
            applied_step=step if ok else None,
            id=request.id,
        )
        request.reply(ok, error, applied_step=step if ok else None, **fields)

    def _stop(self, request: Request | None) -> None:
        self._interrupted = True
        event = self.save("user")
        if event["error"] is None:
            if request is not None:
                self._acknowledge(request, True, path=event["path"])
        elif request is not None:  # a stop asked for over the channel waits for a checkpoint
            self._interrupted = False
            self._acknowledge(
                request, False, f"{event['error']}; not stopping: free space and stop again"
            )
        else:  # a signal stops the run anyway; the end event says what was not saved
            self._end_note = f"stopped without a final checkpoint: {event['error']}"

    # Checkpoints

    def save(self, kind: str) -> dict[str, Any]:
        """Writes a checkpoint of everything the run needs to continue, and logs it."""
        started = time.perf_counter()
        self._sync_sums()
        progress = self.progress
        progress.saves += 1
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        params = dict(self.model.named_parameters())
        for name, p in params.items():
            buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                tensors[f"optimizer.{name}.momentum_buffer"] = buffer
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        data_state = self.train_batches.state_dict()
        tensors["rng.data"] = data_state["generator"]
        meta = {
            "kind": kind,
            "architecture": self.model.arch.to_dict(),
            "config": self.effective_config().to_dict(),
            "progress": asdict(progress),
            "settings": self.settings.to_dict(),
            "metrics": self.metrics,
            "data": {"position": data_state["position"], "epoch": data_state["epoch"]},
            "params": self.model.num_params(),
            "time": time.time(),
        }
        path = self.run_dir / checkpoint_name(progress.step, kind)
        try:
            size, error = save_checkpoint(path, tensors, meta), None
        except OSError as e:  # a full disk, a quota, a read-only mount: training goes on
            size, error = (
                0,
                f"could not write {path.name}: {e.strerror or e}; " + (self._last_good_note()),
            )
        event = self.emit(
            "checkpoint",
            path=None if error else str(path),
            kind=kind,
            epoch=progress.epoch,
            step=progress.step,
            seconds=time.perf_counter() - started,
            bytes=size,
            error=error,
            sync=True,
        )
        if kind == "epoch" and error is None:
            self._prune()
        return event

    def _last_good_note(self) -> str:
        try:
            return f"the last good checkpoint, {latest_checkpoint(self.run_dir).name}, is kept"
        except CheckpointError:
            return "no checkpoint of this run exists yet"

    def _prune(self) -> None:
        """Keeps the last `checkpoint.keep` epoch checkpoints written; grow and user ones stay."""
        epoch_files = [
            p for p in find_checkpoints(self.run_dir) if p.name.endswith("-epoch.safetensors")
        ]
        epoch_files.sort(key=save_count)  # by when they were written, not by step
        for path in epoch_files[: -self.config.checkpoint.keep]:
            path.unlink(missing_ok=True)

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Loads weights, momentum, RNG states, batch position, counters and live settings."""
        try:
            self.model.load_state_dict(checkpoint.group("model"))
        except RuntimeError as e:
            raise TrainingError(
                f"{checkpoint.path} does not match its own architecture: {str(e).splitlines()[0]}"
            ) from None
        params = dict(self.model.named_parameters())
        for name, buffer in checkpoint.group("optimizer").items():
            pname = name.removesuffix(".momentum_buffer")
            if pname in params:
                param = params[pname]
                self.optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(
                    buffer
                )  # in the parameter's device and memory layout
        torch.set_rng_state(checkpoint.tensors["rng.torch"])
        if self.device.type == "cuda" and "rng.cuda" in checkpoint.tensors:
            torch.cuda.set_rng_state(checkpoint.tensors["rng.cuda"], self.device)
        data = checkpoint.meta.get("data", {})
        self.train_batches.load_state_dict(
            {
                "generator": checkpoint.tensors["rng.data"],
                "position": data.get("position", 0),
                "epoch": data.get("epoch", 0),
            }
        )
        known = {f.name for f in fields(Progress)}
        self.progress = Progress(
            **{k: v for k, v in checkpoint.meta["progress"].items() if k in known}
        )
        # Resumed from an older checkpoint, its own saves must still count as the newest: above
        # those of the steps it goes back on, which stay on disk.
        counts = [save_count(p) for p in find_checkpoints(self.run_dir)]
        self.progress.saves = max([self.progress.saves, *counts])
        self.metrics = checkpoint.meta.get("metrics") or {}


class _Window:
    """Loss, accuracy and images per second since the last `train` event."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.began = time.perf_counter()
        self.excluded = 0.0
        self.excluded_total = 0.0
        self.images = 0
        self.loss: torch.Tensor | float = 0.0
        self.correct: torch.Tensor | int = 0

    def add(self, n: int, loss: torch.Tensor, correct: torch.Tensor) -> None:
        self.images += n
        self.loss = self.loss + loss * n
        self.correct = self.correct + correct

    def exclude(self, seconds: float) -> None:
        """Time spent paused or growing, which is not training time."""
        self.excluded += seconds
        self.excluded_total += seconds

    def read(self) -> tuple[float, float, float]:
        seconds = time.perf_counter() - self.began - self.excluded
        n = max(1, self.images)
        loss = float(self.loss) / n
        acc = float(self.correct) / n
        rate = self.images / seconds if seconds > 0 else 0.0
        self.began, self.excluded, self.images = time.perf_counter(), 0.0, 0
        self.loss, self.correct = 0.0, 0
        return loss, acc, rate
