"""The tray app's parts that need no agent: icons per state, the worker-thread calls, the settings form parsing,
the evaluation report table, the loss chart."""

from __future__ import annotations

import threading

from agent.api.models import AgentState, AgentStatus, ErrorInfo
from pipelines.errors import RepoError
from ui.backend import Backend, describe_error
from ui.icons import LOOKS, look_key, state_pixmap
from ui.tabs.models import ModelsTab, fmt_metric, gate_text
from ui.tabs.settings import SettingsTab, from_text
from ui.tray import Tray, tooltip_text
from ui.widgets import LossChart


def status(state: AgentState = AgentState.IDLE, **changes) -> AgentStatus:
    values = dict(
        state=state, detail="idle", progress=None, paused=False, repos=1, jobs_queued=0, running_job=None,
        serving_model=None, server_running=False, last_error=None, pid=1, version="0.1.0",
    )  # fmt: skip
    values.update(changes)
    return AgentStatus(**values)


class Slow:
    """Stands for the agent's API: answers once ``answer`` is set (at most 5 s; ``released``: it was set in time),
    on whatever thread calls it."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.answer = threading.Event()
        self.released = False

    def list_repos(self) -> list:
        self.threads.append(threading.get_ident())
        self.released = self.answer.wait(5)
        return ["r"]

    def add_repo(self, path: str) -> None:
        raise RepoError(f"{path} is not a git repository (no .git). Pick the folder you cloned.")

    def remove_repo(self, name: str) -> None:
        raise KeyError(name)


def test_calls_run_off_the_ui_thread_and_errors_arrive_as_title_and_message(qtbot) -> None:
    api = Slow()
    backend = Backend(api=api)
    got: list = []
    backend.call("list_repos", on_done=got.append)
    api.answer.set()  # the answer is released only once the call returned: a call that waited for it timed out
    qtbot.waitUntil(lambda: got == [["r"]], timeout=5000)
    assert api.released  # the UI thread did not wait for the answer
    assert api.threads and api.threads[0] != threading.get_ident()

    errors: list = []
    backend.call("add_repo", "/tmp/x", on_error=lambda t, m: errors.append((t, m)))
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert errors[0] == ("Repository problem", "/tmp/x is not a git repository (no .git). Pick the folder you cloned.")
    with qtbot.waitSignal(backend.error, timeout=5000) as signal:
        backend.call("remove_repo", "x")
    assert signal.args[0] == "Unexpected error" and "Traceback" not in signal.args[1]
    assert describe_error(ConnectionRefusedError("refused"))[0] == "Agent unreachable"


def test_every_state_has_its_own_look_and_progress_draws_a_ring() -> None:
    centers = {key: state_pixmap(key, None, 32).toImage().pixelColor(16, 8).name() for key in LOOKS}
    assert len(set(centers.values())) == len(LOOKS)
    empty = state_pixmap("training", 0.0, 64).toImage()
    half = state_pixmap("training", 0.5, 64).toImage()
    most = state_pixmap("training", 0.9, 64).toImage()
    assert empty.pixelColor(60, 32) != half.pixelColor(60, 32)  # right side: lit at 50% (clockwise from top)
    assert half.pixelColor(4, 32) == empty.pixelColor(4, 32) != most.pixelColor(4, 32)  # left: lit at 90% only
    assert look_key("idle", True) == "serving" and look_key("training", True) == "training"


def test_tray_follows_status_without_an_agent_call(qtbot) -> None:
    backend = Backend(api=Slow())
    tray = Tray(backend)
    assert tray.look == "disconnected" and not tray.retrain_action.isEnabled()
    backend.status_changed.emit(status(AgentState.TRAINING, detail="train (job 3)", progress=0.42, paused=True))
    assert tray.look == "training" and tray.status_action.text() == "repopilot: Training 42%"
    assert tray.watch_action.text() == "Resume watching"
    backend.status_changed.emit(status(server_running=True, serving_model="v2"))
    assert tray.look == "serving" and tray.server_action.text() == "Stop completion server"
    failed = status(AgentState.ERROR, detail="boom", last_error=ErrorInfo("Job 4 failed", "eval failed"))
    backend.status_changed.emit(failed)
    assert "Last error: Job 4 failed" in tooltip_text(failed) and tray.dismiss_action.isVisible()
    backend.notification.emit("Model deployed", "v2 now serves completions")
    assert tray.notifications == [("Model deployed", "v2 now serves completions")]


def test_settings_form_round_trips_and_passes_bad_values_to_the_agent(qtbot) -> None:
    assert from_text("12", 3) == 12 and from_text("x", 3) == "x" and from_text("2.5e-4", 1e-3) == 2.5e-4
    assert from_text("--block-size 64 --x 'a b'", ["--y"]) == ["--block-size", "64", "--x", "a b"]
    tab = SettingsTab(Backend(api=Slow()))
    settings = {
        "agent": {"api_port": 7421, "data_dir": "/d"},
        "training": {"max_steps": 10, "lora": False, "train_args": ["--block-size", "64"]},
        "policy": {"quiet_hours": ""},
        "server": {"runtime": "auto", "port": 5000},
        "gpu_boxes": [{"name": "gpu1", "kind": "ssh", "host": "h", "port": 22, "gpus": [0, 1]}],
    }
    tab.show_settings(settings)
    tab.fields[("training", "max_steps")].setText("ten")
    tab.fields[("training", "lora")].setChecked(True)
    data = tab.collect()
    assert "data_dir" not in data["agent"]
    assert data["training"] == {"max_steps": "ten", "lora": True, "train_args": ["--block-size", "64"]}
    assert data["gpu_boxes"][0]["gpus"] == [0, 1] and data["gpu_boxes"][0]["port"] == 22


REPORT = {
    "models": {"baseline": {"path": "/m/base"}, "candidate": {"path": "/m/v2"}},
    "gate": {"worse": False, "applied": True, "reasons": ["loss improved"], "rule": "r"},
    "splits": {
        "validation": {
            "files": 4, "lines": 40, "internal_lines": 12,
            "metrics": {
                "loss": {"baseline": 6.2, "candidate": 3.1, "delta": -3.1, "ci": [-3.5, -2.7], "verdict": "better"},
                "exact_match": {"baseline": 0.1, "candidate": 0.25, "delta": 0.15, "ci": None, "verdict": "unclear"},
            },
        }
    },
}  # fmt: skip


def test_models_tab_shows_the_report_side_by_side(qtbot) -> None:
    from agent.api.models import ModelInfo

    tab = ModelsTab(Backend(api=Slow()))
    model = ModelInfo("v2", None, "d1", "deployed", 0.0, True, "/r", "/r/model", {}, {"steps": 20}, REPORT)
    tab._show_models([model])
    assert tab.metrics.rowCount() == 2
    row = [tab.metrics.item(0, c).text() for c in range(6)]
    assert row == ["loss (lower is better)", "6.2000", "3.1000", "-3.1000", "-3.5000 .. -2.7000", "better"]
    assert tab.metrics.item(1, 1).text() == "10.0%" and tab.metrics.item(1, 3).text() == "+15.0 pp"
    assert gate_text(REPORT) == "PASS" and fmt_metric(None, "loss") == "n/a"
    assert not tab.deploy_button.isEnabled()  # it already serves


def test_loss_chart_draws_a_line(qtbot) -> None:
    chart = LossChart()
    chart.resize(400, 240)
    blank = chart.grab().toImage()
    chart.set_points([[0, 6.0], [5, 4.0], [10, 3.0], [15, 2.5]])
    drawn = chart.grab().toImage()
    assert blank != drawn
    purple = sum(1 for x in range(0, 400, 2) for y in range(0, 240, 2) if drawn.pixelColor(x, y).name() == "#8e44ad")
    assert purple > 20
