"""agent.config (TOML <-> dataclasses, validation) and agent.policy (retrain decisions, pruning)."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.config import (
    AgentConfig,
    Config,
    GpuBox,
    PolicyConfig,
    TrainingConfig,
    config_path,
    default_config,
    load_config,
    save_config,
)
from agent.policy import in_quiet_hours, models_to_prune, parse_quiet_hours, should_retrain
from pipelines.errors import InputError

NOON = dt.datetime(2024, 5, 6, 12, 0)


def test_defaults_when_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("REPOPILOT_CONFIG", str(tmp_path / "missing.toml"))
    assert config_path() == tmp_path / "missing.toml"
    config = load_config()
    assert config == default_config()
    assert config.agent.api_port == 7421
    assert config.agent.data_dir
    assert config.training.base_model == "Salesforce/codegen-350M-multi"
    assert (config.policy.min_changed_lines, config.policy.min_changed_files, config.policy.keep_models) == (200, 5, 5)
    assert config.gpu_boxes == []


def test_partial_file_keeps_other_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[policy]\nquiet_hours = "22:00-07:00"\nschedule_hours = 24\n')
    config = load_config(path)
    assert config.policy.quiet_hours == "22:00-07:00"
    assert config.policy.schedule_hours == 24.0
    assert config.policy.min_changed_lines == 200
    assert config.training == TrainingConfig()


def test_full_config_round_trips(tmp_path):
    config = Config(
        agent=AgentConfig(api_port=8000, data_dir=str(tmp_path / 'da"ta \\ dir')),
        training=TrainingConfig(base_model="my/model-ünï", max_steps=50, learning_rate=1e-5, batch_size=2, lora=True),
        policy=PolicyConfig(
            min_changed_lines=10, min_changed_files=2, schedule_hours=1.5, quiet_hours="22:00-07:00", keep_models=3
        ),
        gpu_boxes=[
            GpuBox(name="here", gpus=[0]),
            GpuBox(
                name="big", kind="ssh", host="gpu.lan", user="me", port=2222, key_file="~/.ssh/id", work_dir="/w",
                gpus=[0, 1, 3],
            ),
        ],
    )  # fmt: skip
    path = save_config(config, tmp_path / "sub" / "config.toml")
    assert path.exists()
    assert load_config(path) == config
    assert not [p for p in path.parent.iterdir() if p.name != "config.toml"]  # no temp file left behind


def test_all_problems_reported_together(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[agent]\napi_port = 70000\n"
        '[training]\nmax_step = 10\nlora = "yes"\n'
        '[policy]\nquiet_hours = "25:00-07:00"\nkeep_models = 0\n'
        '[[gpu_boxes]]\nname = "a"\nkind = "ftp"\n'
        '[[gpu_boxes]]\nname = "a"\nkind = "ssh"\ngpus = [0, "1"]\n'
        "[extra]\n"
    )
    with pytest.raises(InputError) as info:
        load_config(path)
    err = info.value
    assert err.title == "Invalid configuration"
    assert str(path) in err.message
    for key in (
        "agent.api_port",
        "training.max_step",
        "training.lora",
        "policy.quiet_hours",
        "policy.keep_models",
        "gpu_boxes[0].kind",
        "gpu_boxes[1].name",
        "gpu_boxes[1].host",
        "gpu_boxes[1].gpus",
        "extra",
    ):
        assert f"- {key}:" in err.message, key
    assert "10 problems" in err.message


def test_exposing_the_completion_server_needs_an_api_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[server]\nhost = "0.0.0.0"\n')
    with pytest.raises(InputError, match=r"server\.host: Listening on 0\.0\.0\.0") as info:
        load_config(path)
    assert "no API key is set" in info.value.message
    path.write_text('[server]\nhost = "my-laptop"\napi_key = "k"\n')
    with pytest.raises(InputError, match="not an IP address"):
        load_config(path)
    path.write_text('[server]\nhost = "0.0.0.0"\napi_key = "k"\n')
    assert load_config(path).server.host == "0.0.0.0"
    assert load_config(tmp_path / "none.toml").server.host == "127.0.0.1"


def test_malformed_toml_names_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[agent\n")
    with pytest.raises(InputError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in info.value.message


def test_quiet_hours_wrapping_midnight():
    spec = "22:00-07:00"
    day = dt.date(2024, 5, 6)
    at = lambda h, m=0: dt.datetime.combine(day, dt.time(h, m))  # noqa: E731
    assert in_quiet_hours(at(23), spec)
    assert in_quiet_hours(at(22), spec)
    assert in_quiet_hours(at(0, 30), spec)
    assert in_quiet_hours(at(6, 59), spec)
    assert not in_quiet_hours(at(7), spec)
    assert not in_quiet_hours(at(12), spec)
    assert not in_quiet_hours(at(21, 59), spec)
    assert in_quiet_hours(at(13), "12:30-14:00") and not in_quiet_hours(at(14), "12:30-14:00")
    assert not in_quiet_hours(at(3), "")
    for bad in ("22-07", "22:00", "24:00-01:00", "10:00-10:00"):
        with pytest.raises(ValueError):
            parse_quiet_hours(bad)


def test_thresholds_by_lines_and_by_files():
    policy = PolicyConfig(min_changed_lines=200, min_changed_files=5)
    assert not should_retrain((199, 4), NOON, NOON, policy).retrain
    by_lines = should_retrain((200, 1), NOON, NOON, policy)
    assert by_lines.retrain and "lines" in by_lines.reason
    by_files = should_retrain((3, 5), NOON, NOON, policy)
    assert by_files.retrain and "files" in by_files.reason


def test_schedule_due_only_with_changes():
    policy = PolicyConfig(schedule_hours=24)
    long_ago = NOON - dt.timedelta(hours=25)
    assert not should_retrain((0, 0), long_ago, NOON, policy).retrain
    due = should_retrain((1, 1), long_ago, NOON, policy)
    assert due.retrain and "scheduled" in due.reason
    assert not should_retrain((1, 1), NOON - dt.timedelta(hours=23), NOON, policy).retrain
    assert should_retrain((1, 1), None, NOON, policy).retrain  # never trained
    assert not should_retrain((1, 1), long_ago, NOON, PolicyConfig(schedule_hours=0)).retrain


def test_quiet_hours_block_and_give_next_allowed():
    policy = PolicyConfig(quiet_hours="22:00-07:00")
    late = dt.datetime(2024, 5, 6, 23, 15)
    decision = should_retrain((500, 10), NOON, late, policy)
    assert not decision.retrain
    assert decision.reason == "quiet hours until 07:00"
    assert decision.next_allowed == dt.datetime(2024, 5, 7, 7, 0)
    early = should_retrain((500, 10), NOON, dt.datetime(2024, 5, 7, 1, 0), policy)
    assert early.next_allowed == dt.datetime(2024, 5, 7, 7, 0)
    after = should_retrain((500, 10), NOON, dt.datetime(2024, 5, 7, 7, 0), policy)
    assert after.retrain and after.next_allowed is None


def test_manual_retrain_bypasses_thresholds_and_quiet_hours():
    policy = PolicyConfig(quiet_hours="22:00-07:00")
    late = dt.datetime(2024, 5, 6, 23, 15)
    assert not should_retrain((0, 0), NOON, late, policy).retrain
    forced = should_retrain((0, 0), NOON, late, policy, force=True)
    assert forced.retrain and "manual" in forced.reason


def test_pruning_keeps_newest_and_serving():
    base = dt.datetime(2024, 1, 1)
    models = [(f"v{i}", base + dt.timedelta(days=i), i == 1) for i in range(6)]  # v1 serves
    assert models_to_prune(models, keep=2) == ["v0", "v2", "v3"]
    assert models_to_prune(list(reversed(models)), keep=2) == ["v0", "v2", "v3"]
    assert models_to_prune(models, keep=10) == []
    assert models_to_prune(models, keep=0) == ["v0", "v2", "v3", "v4", "v5"]


def test_agent_modules_do_not_import_torch():
    import agent.config
    import agent.policy

    for module in (agent.config, agent.policy):
        with open(module.__file__, encoding="utf-8") as handle:
            assert "torch" not in handle.read()
