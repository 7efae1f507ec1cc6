"""The Textual monitor: it reads a run directory and speaks to its trainer, never importing it."""

from fireflytui.app.monitor import MonitorApp, run_monitor

__all__ = ["MonitorApp", "run_monitor"]
