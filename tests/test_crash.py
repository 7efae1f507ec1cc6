"""SIGKILL in each phase (training steps, a grow step, a checkpoint write): the run resumes.

A small version of benchmarks/crash_kill.py, with its helpers: one demo run of two epochs and one
grow step, killed three times through the CLI's headless trainer and resumed each time.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from fireflytui.events import EVENTS_NAME, read_events
from fireflytui.rundir import is_live

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import crash_kill  # noqa: E402 - found through the path added above


def test_sigkill_in_every_phase_resumes_to_the_end(tmp_path):
    settings = crash_kill.Settings(epochs=2, images=512, test_images=128)
    campaign = crash_kill.Campaign(
        tmp_path,
        settings,
        random.Random(0),
        per_run=6,
        retries=2,  # an aim that lands elsewhere (a noisy machine) is tried again
        tear_every=1,  # every kill's log gets a torn last line for the next trainer to cut
        spread=False,  # each kill at the first moment of its phase, so one run holds all three
        reference=False,
    )
    try:
        # The order makes one run reach every phase: a kill in grow round 1, then in the
        # checkpoint written after that grow step is redone, then in epoch 2's training steps.
        kills = campaign.run(["grow", "checkpoint", "training"])
    finally:
        if campaign.proc is not None and not campaign.proc.exited():
            campaign.proc.kill()
            campaign.proc.wait_gone()

    assert {k.landed for k in kills} >= set(crash_kill.PHASES), [
        (k.aimed, k.landed, k.moment) for k in kills
    ]
    for kill in kills:
        assert kill.checkpoint_ok, kill  # check 1: the latest checkpoint loads
        assert kill.log_ok and kill.torn in ("added", "kill"), kill  # check 2, torn and repaired
        assert kill.resumed and kill.finished, kill  # check 3
        assert kill.survived
    assert campaign.runs and all(r.finished and r.epochs == 2 for r in campaign.runs)
    for run in campaign.runs:
        run_dir = tmp_path / run.name
        assert not is_live(run_dir)
        lines = (run_dir / EVENTS_NAME).read_bytes().split(b"\n")
        assert lines[-1] == b""
        events = [json.loads(line) for line in lines[:-1]]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events == read_events(run_dir)
        assert sum(e["type"] == "start" for e in events) == run.kills + 1
        assert events[-1]["type"] == "end" and events[-1]["status"] == "finished"
        assert max(e["epoch"] for e in events if e["type"] == "epoch") == settings.epochs
