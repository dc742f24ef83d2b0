"""The tray app and dashboard driving a real agent daemon (started by the app) over the real HTTP client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication

from tests.ui.conftest import LiveAgent
from ui.app import TrayApp, connect_agent
from ui.backend import Backend


class Recorder:
    """What reached the tray: every look (icon state) and the agent states behind them."""

    def __init__(self, app: TrayApp) -> None:
        self.looks: list[str] = []
        self.states: list[str] = []
        app.backend.status_changed.connect(self._status)
        self.app = app

    def _status(self, status) -> None:
        self.states.append(status.state.value)
        self.looks.append(self.app.tray.look)


@pytest.fixture
def tray_app(qtbot, live_agent: LiveAgent) -> Iterator[TrayApp]:
    backend = Backend(connect=lambda: connect_agent(str(live_agent.config)), poll_timeout=2.0)
    app = TrayApp(backend, show_errors=False)
    qtbot.addWidget(app.dashboard)
    app.start()
    try:
        qtbot.waitUntil(lambda: app.tray.status is not None, timeout=90_000)
        yield app
    finally:
        backend.stop(wait=5.0)


def wait_job(qtbot, app: TrayApp, kind: str, state: str, timeout_s: float, live: LiveAgent) -> None:
    def seen() -> bool:
        jobs = app.dashboard.jobs.jobs
        if any(j.state in ("failed", "cancelled") for j in jobs):
            raise RuntimeError("a job failed")
        return any(j.kind == kind and j.state == state for j in jobs)

    try:
        qtbot.waitUntil(seen, timeout=int(timeout_s * 1000))
    except Exception:
        jobs = "\n".join(f"#{j.id} {j.kind} {j.state} {j.error}" for j in app.dashboard.jobs.jobs)
        raise AssertionError(f"no {kind} job reached {state}:\n{jobs}\n{live.log_tail()}") from None


def test_app_starts_the_agent_and_follows_a_repo_from_add_to_indexed(qtbot, tray_app: TrayApp, live_agent, tmp_path):
    app, dash = tray_app, tray_app.dashboard
    record = Recorder(app)
    main_thread = threading.get_ident()
    assert app.tray.look == "idle"
    assert app.tray.server_action.text() == "Start completion server"
    assert "0 repo(s)" in app.tray.icon.toolTip()

    app.open_dashboard()
    assert dash.isVisible()
    qtbot.waitUntil(lambda: dash.settings.loads > 0 and dash.repos.loads > 0, timeout=20_000)

    # a folder that is not a git repo: the agent's RepoError reaches the user as title + message
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    dash.repos.add_repo(str(plain))
    qtbot.waitUntil(lambda: bool(dash.errors), timeout=20_000)
    title, message = dash.errors[-1]
    assert title == "Repository problem"
    assert "not a git repository" in message and "Traceback" not in message

    # the real repo: it shows, a dataset job appears and finishes, the repo row says what was indexed
    dash.repos.path_edit.setText(str(live_agent.repo))
    dash.repos.exclude_edit.setText("*.md")
    dash.repos.add_from_form()
    qtbot.waitUntil(lambda: dash.repos.table.rowCount() == 1, timeout=20_000)
    assert dash.repos.table.item(0, 4).text() == "*.md"
    wait_job(qtbot, app, "dataset", "done", 120, live_agent)
    qtbot.waitUntil(lambda: dash.repos.dataset is not None and dash.repos.dataset.files_kept > 0, timeout=20_000)
    qtbot.waitUntil(lambda: bool(dash.repos.repos and dash.repos.repos[0].last_indexed_commit), timeout=20_000)
    repo = dash.repos.repos[0]
    assert repo.last_indexed_commit == repo.head_commit
    assert dash.repos.dataset_labels["files"].text() == str(dash.repos.dataset.files_kept)
    qtbot.waitUntil(lambda: app.tray.look == "idle" and "1 repo(s)" in app.tray.icon.toolTip(), timeout=20_000)
    assert "indexing" in record.states, record.states  # the tray went through indexing and back
    assert "indexing" in record.looks

    # the job's log tail and progress reach the Jobs tab
    dash.tabs.setCurrentWidget(dash.jobs)
    qtbot.waitUntil(lambda: dash.jobs.job is not None and dash.jobs.job.kind == "dataset", timeout=20_000)
    qtbot.waitUntil(lambda: dash.jobs.progress_bar.value() == 1000, timeout=20_000)
    assert not dash.jobs.cancel_button.isEnabled()

    # pause / resume watching from the tray menu: the state comes back to the icon and the menu
    app.tray.watch_action.trigger()
    qtbot.waitUntil(lambda: bool(app.tray.status and app.tray.status.paused), timeout=20_000)
    assert app.tray.watch_action.text() == "Resume watching"
    assert "Watching paused" in app.tray.icon.toolTip()
    app.tray.watch_action.trigger()
    qtbot.waitUntil(lambda: bool(app.tray.status and not app.tray.status.paused), timeout=20_000)
    assert app.tray.watch_action.text() == "Pause watching"

    # settings: every problem of a bad edit is shown at once, a good edit is saved and read back
    fields = dash.settings.fields
    fields[("policy", "quiet_hours")].setText("25:00-99")
    fields[("training", "max_steps")].setText("-3")
    errors_before = len(dash.errors)
    dash.settings.save()
    qtbot.waitUntil(lambda: len(dash.errors) > errors_before, timeout=20_000)
    title, message = dash.errors[-1]
    assert title == "Invalid configuration"
    assert "quiet_hours" in message and "max_steps" in message
    fields[("policy", "quiet_hours")].setText("22:00-07:00")
    fields[("training", "max_steps")].setText("20")
    saved = dash.settings.saved
    dash.settings.save()
    qtbot.waitUntil(lambda: dash.settings.saved > saved, timeout=20_000)
    assert dash.settings.settings["policy"]["quiet_hours"] == "22:00-07:00"
    assert "22:00-07:00" in Path(live_agent.config).read_text()

    # no model yet: starting the server from the tray fails with the agent's own words
    errors_before = len(dash.errors)
    app.tray.server_action.trigger()
    qtbot.waitUntil(lambda: len(dash.errors) > errors_before, timeout=30_000)
    assert "Traceback" not in dash.errors[-1][1]
    assert threading.get_ident() == main_thread


def test_retrain_from_the_tray_then_serve_test_and_stop(qtbot, tray_app: TrayApp, live_agent):
    app, dash = tray_app, tray_app.dashboard
    record = Recorder(app)
    app.open_dashboard()
    dash.repos.add_repo(str(live_agent.repo))
    wait_job(qtbot, app, "dataset", "done", 120, live_agent)

    app.tray.retrain_action.trigger()
    wait_job(qtbot, app, "deploy", "done", 420, live_agent)
    assert "training" in record.states, record.states
    qtbot.waitUntil(lambda: app.tray.look == "serving", timeout=60_000)
    assert app.tray.server_action.text() == "Stop completion server"
    qtbot.waitUntil(lambda: any(t == "Model deployed" for t, _ in app.tray.notifications), timeout=20_000)

    # Jobs: the training job's loss chart has points
    train = next(j for j in dash.jobs.jobs if j.kind == "train")
    from ui.widgets import select_key

    dash.tabs.setCurrentWidget(dash.jobs)
    select_key(dash.jobs.table, train.id)
    qtbot.waitUntil(lambda: dash.jobs.job is not None and dash.jobs.job.id == train.id, timeout=10_000)
    qtbot.waitUntil(lambda: len(dash.jobs.chart.points) >= 2, timeout=10_000)
    qtbot.waitUntil(lambda: bool(dash.jobs.log_text), timeout=10_000)

    # Models: the new version with its before/after report
    dash.tabs.setCurrentWidget(dash.models)
    qtbot.waitUntil(lambda: bool(dash.models.models) and dash.models.metrics.rowCount() > 0, timeout=20_000)
    model = dash.models.models[0]
    assert model.serving and model.eval is not None
    assert dash.models.metrics.item(0, 1).text() not in ("", "n/a")
    assert dash.models.gate_label.text().startswith("<b>PASS")

    # Server: running, a test completion, the VS Code settings on the clipboard
    dash.tabs.setCurrentWidget(dash.server)
    qtbot.waitUntil(lambda: dash.server.info is not None and dash.server.info.running, timeout=20_000)
    assert dash.server.labels["url"].text().startswith("http://")
    before = dash.server.completions
    dash.server.test_completion()
    qtbot.waitUntil(lambda: dash.server.completions > before, timeout=120_000)
    assert dash.server.completion_view.toPlainText().startswith(dash.server.prompt_edit.toPlainText())
    dash.server.copy_vscode_settings()
    qtbot.waitUntil(lambda: bool(dash.server.settings_json), timeout=20_000)
    settings = json.loads(QGuiApplication.clipboard().text())
    assert settings["fauxpilot.server"].startswith("http://")
    assert settings["fauxpilot.enabled"] is True

    # Stop and start the server from the tray: the icon and the menu follow
    app.tray.server_action.trigger()
    qtbot.waitUntil(lambda: app.tray.look == "idle", timeout=60_000)
    assert app.tray.server_action.text() == "Start completion server"
    app.tray.server_action.trigger()
    qtbot.waitUntil(lambda: app.tray.look == "serving", timeout=120_000)
    assert app.tray.server_action.text() == "Stop completion server"
    assert not dash.errors, dash.errors
