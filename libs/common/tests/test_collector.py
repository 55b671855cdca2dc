"""The garbage-collector tuning of a serving process (``app.tune_collector``), in processes of their
own: it changes process-wide state that this test process must keep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TUNE_SCRIPT = """
import gc, json, sys
from civicsignals.common.app import tune_collector
from civicsignals.common.settings import ServiceSettings

before = gc.get_threshold()[0]
tune_collector(ServiceSettings(data_dir=sys.argv[1], **json.loads(sys.argv[2])))
print(json.dumps({"before": before, "threshold": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}))
"""


def _tuned(tmp_path: Path, **settings: object) -> dict[str, int]:
    """Run ``tune_collector`` in a process of its own: it changes process-wide state."""
    result = subprocess.run(
        [sys.executable, "-c", TUNE_SCRIPT, str(tmp_path), json.dumps(settings)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    tuned: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return tuned


def test_the_serving_process_freezes_what_start_up_made_and_collects_less_often(tmp_path: Path) -> None:
    tuned = _tuned(tmp_path)
    assert tuned["frozen"] > 10_000  # the imported modules, models and schemas at least
    assert tuned["threshold"] == 20_000 != tuned["before"]


def test_the_collector_tuning_can_be_switched_off(tmp_path: Path) -> None:
    tuned = _tuned(tmp_path, gc_freeze_after_start=False, gc_young_threshold=0)
    assert tuned["frozen"] == 0
    assert tuned["threshold"] == tuned["before"]
