"""The real `repopilot train` on CPU: plain, through the deepspeed launcher with two ranks, LoRA, resume, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.finetune.data import pack
from tests.finetune.conftest import ENV, TINY_FAST, events, run_train


def eval_loss(model_dir: Path, dataset: Path) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    packed, _ = pack(dataset, "validation", tokenizer, 64, cache_dir=model_dir / "tokens")
    losses = []
    with torch.no_grad():
        for i in range(packed.blocks):
            ids, labels, mask = (torch.from_numpy(a)[None] for a in packed.block(i))
            losses.append(model(input_ids=ids, labels=labels, attention_mask=mask).loss.item())
    return sum(losses) / len(losses)


def test_plain_run_learns_and_keeps_the_embedding_rows(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_train(str(dataset), "-o", str(run), *TINY_FAST, "--launcher", "none", "--max-steps", "80", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training [" in result.stderr  # the progress bar
    summary = json.loads(result.stdout)
    assert summary["status"] == "done" and summary["steps"] == 80
    # Learned: validation loss well below the untrained base's.
    assert eval_loss(run / "model", dataset) < eval_loss(run / "base", dataset) - 1.0
    # Never shrunk: more embedding rows than tokenizer entries, as many as the base had.
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == AutoModelForCausalLM.from_pretrained(run / "base").get_input_embeddings().weight.shape[0]
    assert rows > len(AutoTokenizer.from_pretrained(run / "model")) == summary["tokenizer_entries"]
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["max_steps"] == 80 and config["resolved"]["block_size"] == 64
    logs = [e for e in events(run) if e["event"] == "log"]
    assert logs and {"step", "loss", "learning_rate", "tokens_per_s", "eta_s", "memory_mb"} <= set(logs[-1])
    assert logs[-1]["loss"] < logs[0]["loss"]
    smoke = json.loads((run / "smoke.json").read_text())
    assert smoke["prompt"] and len(smoke["completion"]) > 0  # generation ran (an 80-step tiny model may babble)


def test_two_cpu_ranks_through_the_deepspeed_launcher_with_zero2_offload(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_train(
        str(dataset), "-o", str(run), *TINY_FAST, "--launcher", "deepspeed", "--num-gpus", "2",
        "--zero-stage", "2", "--offload-optimizer", "--precision", "bf16", "--max-steps", "30", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = next((run / "logs").iterdir()).read_text()
    assert "dist_world_size=2" in log and "--local_rank=1" in log  # the real launcher, two ranks
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] is True
    assert json.loads(result.stdout)["steps"] == 30
    assert eval_loss(run / "model", dataset) < eval_loss(run / "base", dataset)
    assert any(p.name.startswith("global_step") for p in (run / "checkpoints").rglob("*"))  # DeepSpeed states


def test_lora_result_is_merged_into_a_full_model(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_train(
        str(dataset), "-o", str(run), *TINY_FAST, "--launcher", "none", "--lora", "--lora-r", "8",
        "--learning-rate", "0.01", "--max-steps", "40",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run / "model" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(run / "model")
    base = AutoModelForCausalLM.from_pretrained(run / "base")
    assert type(merged).__name__ == "CodeGenForCausalLM"
    changed = [name for name, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[name])]
    assert any("qkv_proj" in name for name in changed)
    assert eval_loss(run / "model", dataset) < eval_loss(run / "base", dataset)


def _start(dataset: Path, run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agent.cli", "train", str(dataset), "-o", str(run), *TINY_FAST, "--launcher", "none"]
    return subprocess.Popen(
        [*cmd, *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for(predicate, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_resume_continues_from_the_last_checkpoint_after_a_kill(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start(dataset, run, "--max-steps", "600", "--save-steps", "50", "--block-size", "128")
    _wait_for(lambda: (run / "checkpoints" / "checkpoint-100" / "trainer_state.json").exists())
    launched = next(e for e in events(run) if e["event"] == "launched")
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI ...
    os.killpg(launched["pid"], signal.SIGKILL)  # ... and its ranks: as a crash would
    proc.wait()
    killed_at = max(e["step"] for e in events(run) if e["event"] == "log")
    assert killed_at < 600 and not (run / "model").exists()
    result = run_train("--resume", "-o", str(run), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    starts = [e for e in events(run) if e["event"] == "start"]
    assert starts[-1]["step"] >= 100 and starts[-1]["step"] % 50 == 0  # from a checkpoint, not from 0
    assert json.loads(result.stdout)["steps"] == 600


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start(dataset, run, "--max-steps", "2000", "--save-steps", "1000", "--block-size", "128")
    _wait_for(lambda: any(e["event"] == "log" and e["step"] >= 20 for e in events(run)))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "status: stopped" in out and "--resume" in err
    stopped = next(e for e in events(run) if e["event"] == "stopping")["step"]
    assert (run / "checkpoints" / f"checkpoint-{stopped}" / "trainer_state.json").exists()
    assert stopped < 1000 and not (run / "model").exists()


def test_unusable_base_model_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    result = run_train(str(dataset), "-o", str(tmp_path / "run"), "--base-model", "nobody/no-such-model")
    assert result.returncode == 1
    assert "Cannot load base model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_picks_half_precision(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_train(str(dataset), "-o", str(run), *TINY_FAST, "--max-steps", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["resolved"]["precision"] in ("bf16", "fp16")
