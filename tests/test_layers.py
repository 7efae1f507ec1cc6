"""The import contract: training code never loads Textual; the app's side never loads torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

# What the monitor app may use to read a run and steer it: the standard library only.
LIGHT = [
    "fireflytui",
    "fireflytui.events",
    "fireflytui.rundir",
    "fireflytui.control",
    "fireflytui.settings",
    "fireflytui.config",
    "fireflytui.table",
]
TRAINING = ["fireflytui.trainer", "fireflytui.launch", "fireflytui.growth", "fireflytui.cli"]


def loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", LIGHT)
def test_run_readers_do_not_load_torch(module):
    loaded = loaded_after_import(module)
    assert "torch" not in loaded and "textual" not in loaded


@pytest.mark.parametrize("module", TRAINING)
def test_training_code_does_not_load_textual(module):
    assert "textual" not in loaded_after_import(module)
