"""bench/learning.py end to end at smoke scale: public base, history cut, `repopilot train`, `repopilot eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.evaluate.conftest import World

ROOT = Path(__file__).resolve().parents[2]


def test_the_learning_benchmark_runs_the_protocol_and_reports_metrics_with_intervals(
    world: World, tmp_path: Path
) -> None:
    out = tmp_path / "learning.json"
    cmd = [sys.executable, str(ROOT / "bench" / "learning.py"), "--repo", str(world.repo.path), "--quick"]
    cmd += ["--cut-commit", world.indexed, "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert done.stdout.rstrip().endswith(out.read_text().rstrip())  # the same JSON on stdout
    assert result["history"]["cut"] == world.indexed and result["history"]["head"] == world.head
    assert "--public-mix" in result["recipe"]
    assert set(result["seconds"]) == {"public_base", "dataset", "finetune", "evaluate"}
    time_split, public = result["metrics"]["time"], result["metrics"]["public"]
    assert time_split["files"] > 0 and time_split["identifier_uses"] > 0 and public["files"] > 0
    for name in ("internal_identifier_recall", "internal_identifier_loss", "other_token_loss"):
        entry = time_split[name]
        assert entry["ci"][0] <= entry["delta"] <= entry["ci"][1], name
    assert public["loss"]["baseline"] > 0 and public["loss"]["ratio_ci"]
    # Even a few steps on the team's older code make its names likelier on the newer files.
    assert time_split["internal_identifier_loss"]["ci"][1] < 0
    assert set(result["goal"]) >= {"recall_at_least_2x_and_gain_ci_above_0", "public_loss_rise_below_10_percent"}
