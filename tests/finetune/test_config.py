"""Arguments, DeepSpeed config and launcher command: what a user configures is what runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import InputError
from pipelines.finetune.args import TrainArgs
from pipelines.finetune.dsconfig import deepspeed_config, launch_command, launch_env, resolve_precision


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    args = TrainArgs(
        dataset=str(tmp_path / "missing"),
        output=str(tmp_path / "run"),
        base_model="not a model",
        zero_stage=5,
        precision="fp8",
        num_gpus=2,
        include="localhost:0,1",
        lora=True,
        learning_rate=3.0,
    )
    with pytest.raises(InputError) as err:
        args.validate()
    message = str(err.value)
    for fragment in ("manifest.json", "not a model", "zero_stage", "precision", "either --num-gpus", "learning_rate"):
        assert fragment in message


def test_precision_follows_the_device() -> None:
    assert resolve_precision("auto", cuda=True, bf16_supported=True) == "bf16"  # Ampere and newer
    assert resolve_precision("auto", cuda=True, bf16_supported=False) == "fp16"  # e.g. V100, T4
    assert resolve_precision("auto", cuda=False, bf16_supported=False) == "fp32"
    assert resolve_precision("bf16", cuda=False, bf16_supported=False) == "bf16"


def test_recipe_config_zero2_with_cpu_offload(tmp_path: Path) -> None:
    args = TrainArgs(dataset=".", output=str(tmp_path))
    gpu = deepspeed_config(args, "fp16", cuda=True)
    zero = gpu["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 200_000_000
    assert gpu["fp16"]["enabled"] and not gpu["bf16"]["enabled"]
    assert gpu["train_micro_batch_size_per_gpu"] == "auto" and gpu["optimizer"]["params"]["lr"] == "auto"
    cpu = deepspeed_config(args, "fp32", cuda=False)
    assert "offload_optimizer" not in cpu["zero_optimization"]
    stage3 = deepspeed_config(TrainArgs(dataset=".", output=".", zero_stage=3), "bf16", cuda=True)
    assert stage3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_launcher_command_and_nccl_workarounds(tmp_path: Path) -> None:
    args = TrainArgs(dataset=".", output=str(tmp_path), include="localhost:1,2", master_port=29555)
    cmd = launch_command(args, tmp_path, use_deepspeed=True, cuda=True)
    assert cmd[-3:] == ["--module", "pipelines.finetune.worker", str(tmp_path)]
    assert cmd[cmd.index("--include") : cmd.index("--include") + 2] == ["--include", "localhost:1,2"]
    assert "--master_port" in cmd and "29555" in cmd
    hostfile = tmp_path / "hosts"
    hostfile.write_text("gpu1 slots=4\ngpu2 slots=4\n")
    multi = launch_command(TrainArgs(dataset=".", output=".", hostfile=str(hostfile)), tmp_path, True, True)
    assert ["--hostfile", str(hostfile)] == multi[1:3]
    env = launch_env(TrainArgs(dataset=".", output=".", nccl_debug="INFO", nccl_shm_disable=True), cuda=True)
    assert env["NCCL_DEBUG"] == "INFO" and env["NCCL_SHM_DISABLE"] == "1" and "TORCH_EXTENSIONS_DIR" in env
    plain = launch_command(TrainArgs(dataset=".", output="."), tmp_path, use_deepspeed=False, cuda=False)
    assert plain[1:] == ["-m", "pipelines.finetune.worker", str(tmp_path)]


def test_default_learning_rate_follows_the_model_size_and_epochs_the_dataset_size() -> None:
    from types import SimpleNamespace

    from pipelines.finetune import recipe

    codegen_350m = SimpleNamespace(n_embd=1024, n_layer=20, vocab_size=51200)
    params = recipe.parameters_of(codegen_350m)
    assert 300e6 < params < 400e6
    assert recipe.learning_rate(params, lora=False) == pytest.approx(5e-5, rel=0.1)  # the recipe's value at 350M
    assert recipe.learning_rate(params, lora=True) == pytest.approx(2e-4, rel=0.1)
    small = recipe.learning_rate(7_000_000, lora=False)
    assert 2e-4 < small < 1e-3  # a small model takes larger steps ...
    assert recipe.learning_rate(10_000, lora=False) == 1e-3  # ... within bounds
    assert recipe.learning_rate(None, lora=False) == 5e-5
    assert recipe.epochs(10_000_000) == 1.0  # a large dataset: one pass
    assert recipe.epochs(250_000) == 4.0  # a small repository: several, at most four
    assert recipe.epochs(500_000) == 2.0
