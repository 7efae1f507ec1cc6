"""The `fireflytui` command line: train, attach, runs, ctl, presets, inspect."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

import fireflytui

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Grow neural networks with Firefly neural architecture descent.",
)

OutOption = Annotated[Path, typer.Option("--out", help="Directory that holds the run directories.")]
MouseOption = Annotated[
    bool,
    typer.Option("--mouse/--no-mouse", help="Let the monitor use the mouse (keys always work)."),
]


USER_ERRORS = {
    "CheckpointError",
    "ConfigError",
    "ControlError",
    "DataError",
    "LaunchError",
    "RunError",
    "SettingError",
    "TrainingError",
}


def _user_errors(fn: Callable) -> Callable:
    """Turns a user's mistake into one line on stderr and exit code 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            kind = type(e)
            if kind.__name__ in USER_ERRORS and kind.__module__.startswith("fireflytui."):
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None
            raise

    return wrapper


@app.command()
@_user_errors
def train(
    preset: Annotated[
        str | None, typer.Option("--preset", "-p", help="Preset name or path to a .toml file.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key: section.key=value (repeatable)."),
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Run name (default: preset-time).")
    ] = None,
    out: OutOption = Path("checkpoints"),
    headless: Annotated[
        bool, typer.Option("--headless", help="Train in the foreground, one line per epoch.")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Train in the background and return.")
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Checkpoint file or run directory to continue."),
    ] = None,
    mouse: MouseOption = True,
) -> None:
    """Train and grow a network in the background, and open the monitor on it.

    Quitting the monitor leaves training running; `fireflytui attach` opens it again.
    """
    from fireflytui.launch import prepare, spawn, train_here, wait_for_start

    if headless and detach:
        raise typer.BadParameter("choose one of --headless and --detach")
    launch = prepare(preset, set_ or [], run=run, out=out, resume=resume)
    for note in launch.notes:
        typer.echo(note)
    if not (headless or detach) and not _has_terminal():
        detach = True  # a script or a pipe: start the run and print how to watch it
        typer.echo("no terminal to draw the monitor in: training in the background")
    if headless:
        typer.echo(f"run directory: {launch.run_dir}")
        code = train_here(launch.run_dir, launch.resume, sys.stdout)
        if launch.discard_if_unstarted() and launch.created:
            typer.echo(f"removed {launch.run_dir}: the run did not start", err=True)
        raise typer.Exit(code)
    proc = spawn(launch.run_dir, launch.resume)
    try:
        wait_for_start(launch.run_dir, proc)
    except Exception:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)
        launch.discard_if_unstarted()
        raise
    run_dir = launch.run_dir
    if not detach:
        _monitor(run_dir, out, mouse)
        return
    typer.echo(f"training in the background (pid {proc.pid}): {run_dir}")
    typer.echo(f"  monitor:   {_attach_command(run_dir, out)}")
    typer.echo(f"  progress:  tail -f {run_dir / 'trainer.log'}")
    typer.echo(f"  control:   fireflytui ctl {run_dir} pause|continue|grow|checkpoint|stop")
    typer.echo(f"             fireflytui ctl {run_dir} set eta=N")
    typer.echo(f"  runs:      fireflytui runs --out {out}")


@app.command()
@_user_errors
def attach(
    run: Annotated[
        str | None,
        typer.Argument(help="Run name under --out, or a run directory (default: the latest)."),
    ] = None,
    out: OutOption = Path("checkpoints"),
    mouse: MouseOption = True,
) -> None:
    """Open the monitor on a run: live if its trainer runs, read-only if it has ended."""
    from fireflytui.rundir import RunError, resolve_run

    run_dir = resolve_run(run, out)
    if not _has_terminal():
        raise RunError("attach draws the monitor in a terminal; none is attached to this process")
    _monitor(run_dir, out, mouse)


def _has_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _attach_command(run_dir: Path, out: Path) -> str:
    """The shortest command that opens the monitor on `run_dir` again."""
    if Path(out) == Path("checkpoints"):
        return f"fireflytui attach {run_dir.name}"
    return f"fireflytui attach {run_dir.name} --out {out}"


def _monitor(run_dir: Path, out: Path, mouse: bool) -> None:
    """Runs the monitor until the user quits, then says how the run stands."""
    from fireflytui.app import run_monitor
    from fireflytui.rundir import is_live, read_pid, summarize

    closed = run_monitor(run_dir, mouse=mouse)
    if closed:
        typer.echo(f"error: {closed}", err=True)
        raise typer.Exit(1)
    if is_live(run_dir):
        typer.echo(f"training goes on in the background (pid {read_pid(run_dir)}): {run_dir}")
        typer.echo(f"  re-attach: {_attach_command(run_dir, out)}")
    else:
        summary = summarize(run_dir)
        note = f" ({summary.note})" if summary.note else ""
        typer.echo(f"run {run_dir.name} is {summary.state}{note}")


@app.command()
@_user_errors
def runs(
    out: OutOption = Path("checkpoints"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
) -> None:
    """List the runs under --out with their state and progress."""
    from fireflytui.rundir import list_run_dirs, summarize

    summaries = [summarize(p) for p in list_run_dirs(out)]
    if as_json:
        for s in summaries:
            typer.echo(json.dumps(s.to_dict()))
        return
    if not summaries:
        typer.echo(f"no runs in {out}")
        return
    typer.echo(
        f"{'run':<32} {'state':<9} {'epoch':>9} {'rounds':>6} {'params':>11} "
        f"{'test acc':>8}  started"
    )
    for s in summaries:
        epoch = f"{s.epoch}/{s.epochs}" if s.epochs else str(s.epoch)
        acc = "" if s.test_acc is None else f"{100 * s.test_acc:.2f}%"
        params = "" if s.params is None else f"{s.params:,}"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started)) if s.started else ""
        note = f"  ({s.note[:70]}...)" if len(s.note) > 70 else f"  ({s.note})" if s.note else ""
        typer.echo(
            f"{s.name:<32} {s.state:<9} {epoch:>9} {s.rounds:>6} {params:>11} {acc:>8}  "
            f"{started}{note}"
        )


@app.command(context_settings={"ignore_unknown_options": True})
@_user_errors
def ctl(
    run: Annotated[str, typer.Argument(help="Run name under --out, or a run directory.")],
    command: Annotated[
        str, typer.Argument(help="pause | continue | grow | checkpoint | stop | set | status")
    ],
    values: Annotated[
        list[str] | None, typer.Argument(help="For set: KEY=VALUE ... (eta, ratio, every, lr).")
    ] = None,
    out: OutOption = Path("checkpoints"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 120.0,
) -> None:
    """Send a command to a live run; it is applied at the next step boundary."""
    from fireflytui.control import parse_assignments, send_command
    from fireflytui.rundir import resolve_run

    run_dir = resolve_run(run, out)
    args = parse_assignments(values or []) if command == "set" else {}
    if command != "set" and values:
        raise typer.BadParameter(f"{command} takes no values")
    reply = send_command(run_dir, command, args, timeout=timeout)
    if not reply.get("ok"):
        typer.echo(f"refused: {reply.get('error')}", err=True)
        raise typer.Exit(1)
    extra = {k: v for k, v in reply.items() if k not in ("ok", "error", "id") and v is not None}
    typer.echo(f"ok: {command} " + " ".join(f"{k}={_shown(v)}" for k, v in extra.items()))


def _shown(value: Any) -> str:
    """A reply value as `key=value` text: nested settings as `eta=12,ratio=0.4`."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@app.command()
@_user_errors
def presets(
    name: Annotated[str | None, typer.Argument(help="A preset to show resolved.")] = None,
) -> None:
    """List the presets, or show one with every key resolved, with units."""
    from fireflytui.config import PRESETS_DIR, describe, load_preset, preset_names

    if name is None:
        for preset in preset_names():
            first = (PRESETS_DIR / f"{preset}.toml").read_text().splitlines()[:1]
            summary = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            typer.echo(f"{preset:<24} {summary}")
        return
    typer.echo(describe(load_preset(name)))


@app.command()
@_user_errors
def inspect(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint file, or a run directory.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="The metadata as one JSON object.")
    ] = False,
) -> None:
    """Show a checkpoint's architecture, progress, metrics and config (tensors are not loaded)."""
    from fireflytui.checkpoint import read_metadata, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    meta = read_metadata(path)
    if as_json:
        typer.echo(json.dumps({"path": str(path), **meta}))
        return
    arch, progress, metrics = meta["architecture"], meta["progress"], meta.get("metrics") or {}
    typer.echo(f"checkpoint   {path} ({meta.get('kind', '?')}, format {meta['format_version']})")
    typer.echo(
        f"network      {arch['name']}, {meta.get('params', 0):,} params, "
        f"{arch['num_classes']} classes, input {tuple(arch['input_shape'])}"
    )
    typer.echo(f"widths       {', '.join(map(str, arch['widths']))}")
    typer.echo(
        f"progress     epoch {progress['epoch']}, step {progress['step']}, "
        f"{progress['round']} grow steps"
    )
    if metrics:
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k != "epoch"
        )
        typer.echo(f"metrics      {shown}")
    settings = meta.get("settings") or {}
    typer.echo("settings     " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    config = meta["config"]
    for section, values in config.items():
        typer.echo(
            f"[{section}]".ljust(13) + " " + ", ".join(f"{k}={v}" for k, v in values.items())
        )


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(f"fireflytui {fireflytui.__version__}")


if __name__ == "__main__":
    app()
