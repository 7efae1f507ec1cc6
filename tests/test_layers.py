"""The import contract: training code never loads Textual; the app never loads torch or training."""

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
    "fireflytui.history",
]
TRAINING = ["fireflytui.trainer", "fireflytui.launch", "fireflytui.growth", "fireflytui.cli"]
# Modules the monitor app must never load: what trains, grows, stores and feeds a network.
TRAINING_ONLY = (
    "trainer",
    "launch",
    "growth",
    "models",
    "data",
    "checkpoint",
    "architecture",
    "cli",
)


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


def test_the_app_knows_a_run_only_through_its_directory():
    loaded = loaded_after_import("fireflytui.app")
    assert "textual" in loaded  # the import did happen
    forbidden = {"torch", "torchvision", "safetensors", "fireflytui.cli"}
    forbidden |= {
        m for m in loaded if m.startswith(tuple(f"fireflytui.{t}" for t in TRAINING_ONLY))
    }
    assert not forbidden & loaded, sorted(forbidden & loaded)
