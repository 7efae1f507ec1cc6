"""The `fireflytui` command line."""

from __future__ import annotations

import typer

import fireflytui

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(f"fireflytui {fireflytui.__version__}")


@app.callback()
def main() -> None:
    """Grow neural networks with Firefly neural architecture descent."""
