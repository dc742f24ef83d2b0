"""Damaged outputs are caught; a failed or killed conversion leaves nothing half-written; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.convert import run as convert_module
from pipelines.convert.errors import DamagedOutputError, ModelInputError, VerificationError
from pipelines.convert.ftmodel import FTModel
from pipelines.convert.run import ConvertOptions, convert
from pipelines.convert.verify import verify_output
from tests.convert.conftest import ENV, Model, make_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def converted(tmp_path: Path, tiny_tokenizer: Path) -> tuple[Model, Path]:
    model = make_model(tmp_path / "acme", tokenizer=tiny_tokenizer)
    root = tmp_path / "models"
    convert(ConvertOptions(model_dir=model.path, models_root=root, gpus=2))
    return model, root


def weights(root: Path) -> Path:
    return root / "acme-2gpu" / "fastertransformer" / "1" / "2-gpu"


def test_truncated_file_is_detected(converted: tuple[Model, Path]) -> None:
    _, root = converted
    target = weights(root) / "model.layers.1.attention.query_key_value.weight.1.bin"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) - 4])
    for checksums in (True, False):
        with pytest.raises(DamagedOutputError, match=r"query_key_value.weight.1.bin has \d+ bytes, expected \d+"):
            verify_output(root / "acme-2gpu", checksums=checksums)
    with pytest.raises(DamagedOutputError, match=r"query_key_value\.weight\.1\.bin"):
        FTModel.load(weights(root))


def test_corrupted_file_of_the_right_size_is_detected_by_its_checksum(converted: tuple[Model, Path]) -> None:
    _, root = converted
    target = weights(root) / "model.lm_head.bias.bin"
    data = bytearray(target.read_bytes())
    data[5] ^= 0xFF
    target.write_bytes(bytes(data))
    verify_output(root / "acme-2gpu", checksums=False)  # sizes alone cannot see it
    with pytest.raises(DamagedOutputError, match=r"model\.lm_head\.bias\.bin does not match its checksum"):
        verify_output(root / "acme-2gpu")


def test_missing_extra_and_unmanifested_files_are_detected(converted: tuple[Model, Path]) -> None:
    _, root = converted
    verify_output(root / "acme-2gpu", forward=True)
    (weights(root) / "model.wte.bin").unlink()
    with pytest.raises(DamagedOutputError, match=r"model\.wte\.bin is missing"):
        verify_output(root / "acme-2gpu")
    (root / "acme-hf" / "stray.bin").write_bytes(b"x")
    with pytest.raises(DamagedOutputError, match=r"files not in SHA256SUMS: stray\.bin"):
        verify_output(root / "acme-hf")
    (root / "acme-hf" / "SHA256SUMS").unlink()
    with pytest.raises(DamagedOutputError, match="SHA256SUMS is missing"):
        verify_output(root / "acme-hf")


def test_failed_conversion_leaves_nothing_and_keeps_the_previous_output(
    converted: tuple[Model, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, root = converted
    before = (root / "acme-2gpu" / "SHA256SUMS").read_text()
    written = []

    def failing_write(path: Path, array) -> int:
        if len(written) == 5:
            raise OSError("No space left on device")
        written.append(path)
        return real_write(path, array)

    real_write = convert_module.write_array
    monkeypatch.setattr(convert_module, "write_array", failing_write)
    with pytest.raises(OSError, match="No space left"):
        convert(ConvertOptions(model_dir=model.path, models_root=root, gpus=2, force=True))
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == ["acme-2gpu", "acme-hf"]
    assert (root / "acme-2gpu" / "SHA256SUMS").read_text() == before
    verify_output(root / "acme-2gpu")
    with pytest.raises(ModelInputError, match=r"already exists\. Pass --force"):
        convert(ConvertOptions(model_dir=model.path, models_root=root, gpus=2))


def test_failed_verification_puts_nothing_in_place(
    tmp_path: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path / "acme", tokenizer=tiny_tokenizer)
    root = tmp_path / "models"
    real = convert_module.compare_logits

    def ft_disagrees(reference, got):
        result = real(reference, got)
        return {**result, "ok": False} if len(calls) == 1 else result

    calls: list[int] = []
    monkeypatch.setattr(convert_module, "compare_logits", lambda r, g: calls.append(1) or ft_disagrees(r, g))
    with pytest.raises(VerificationError, match="gptj_vs_codegen failed"):
        convert(ConvertOptions(model_dir=model.path, models_root=root, gpus=1))
    assert [p.name for p in root.iterdir()] == [".convert+acme.lock"]


def test_leftovers_of_a_killed_run_are_not_output_and_are_cleaned(tmp_path: Path, tiny_tokenizer: Path) -> None:
    model = make_model(tmp_path / "acme", tokenizer=tiny_tokenizer)
    root = tmp_path / "models"
    stale = root / ".convert+acme+k1ll3d" / "ft" / "fastertransformer"
    stale.mkdir(parents=True)
    (stale / "config.pbtxt").write_text("half")
    assert not (root / "acme-1gpu").exists()
    convert(ConvertOptions(model_dir=model.path, models_root=root, gpus=1))
    assert not (root / ".convert+acme+k1ll3d").exists()
    verify_output(root / "acme-1gpu")


def test_killed_conversion_leaves_no_output(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """SIGKILL in the middle of writing the FT files: no <name>-<N>gpu folder exists, and a rerun succeeds."""
    model = make_model(tmp_path / "acme", rows=51200, tokenizer=tiny_tokenizer)
    root = tmp_path / "models"
    killer = (
        "import os, signal, sys\n"
        "from pipelines.convert import run as c\n"
        "real = c.write_array\n"
        "def write(path, array):\n"
        "    if path.name == 'model.layers.1.input_layernorm.weight.bin':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(path, array)\n"
        "c.write_array = write\n"
        f"c.convert(c.ConvertOptions(model_dir={str(model.path)!r}, models_root={str(root)!r}, gpus=1))\n"
    )
    out = subprocess.run([sys.executable, "-c", killer], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == -9
    assert not (root / "acme-1gpu").exists() and not (root / "acme-hf").exists()
    assert any(p.name.startswith(".convert+acme+") and p.is_dir() for p in root.iterdir())  # the half-written one
    convert(ConvertOptions(model_dir=model.path, models_root=root, gpus=1))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["acme-1gpu", "acme-hf"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.convert", *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )


def test_cli(tmp_path: Path, tiny_tokenizer: Path) -> None:
    model = make_model(tmp_path / "runs" / "v7" / "model", tokenizer=tiny_tokenizer)
    root = tmp_path / "models"
    out = cli(
        str(model.path),
        "--gpus",
        "2",
        "--models-root",
        str(root),
        "--mount",
        "/srv/m",
        "--mounted",
        "models-root",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["name"] == "v7" and result["output"] == str(root / "v7-2gpu")  # named after the run
    assert result["model_checkpoint_path"] == "/srv/m/v7-2gpu/fastertransformer/1/2-gpu"
    out = cli(str(root / "v7-2gpu"), "--verify", "--forward")
    assert out.returncode == 0 and "intact" in out.stdout, out.stderr
    out = cli(str(model.path), "--gpus", "3", "--models-root", str(root))
    assert out.returncode == 1
    assert out.stderr.startswith("Cannot convert this model: ") and "Traceback" not in out.stderr
    out = cli(str(model.path), "--gpus", "2", "--models-root", str(root))
    assert out.returncode == 1 and "already exists. Pass --force" in out.stderr
    (root / "v7-2gpu" / "fastertransformer" / "1" / "2-gpu" / "model.wte.bin").write_bytes(b"")
    out = cli(str(root / "v7-2gpu"), "--verify", "--quick")
    assert out.returncode == 1 and out.stderr.startswith("Converted model is damaged: ")
