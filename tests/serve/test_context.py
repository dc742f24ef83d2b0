"""Repository context through the real server (`repopilot serve --context-dataset`), a real dataset of a real
repository, and the real embedded engine."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from pipelines.dataset.builder import update
from tests.context.conftest import PROMPT, billing_dataset
from tests.services import complete, start_api, stop


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return json.loads(response.read())


def wait_for(port: int, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = health(port)
        if check(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {body}")
        time.sleep(0.2)


def test_the_server_puts_repository_context_before_prompts_and_follows_the_dataset(
    tiny_model: Path, tmp_path: Path
) -> None:
    repo, dataset = billing_dataset(tmp_path)
    proc, port = start_api(
        tiny_model, tmp_path / "serve.log", "--context-dataset", str(dataset), "--context-tokens", "96"
    )
    try:
        ready = wait_for(port, lambda body: body["context"]["ready"])
        assert ready["context"]["files"] == 11 and ready["context"]["default"] == "on"
        # The model is given more than the IDE sent (the block); the client gets back only its own prompt.
        status, plain = complete(port, PROMPT, max_tokens=2, repo_context=False, echo=True)
        assert status == 200, plain
        status, with_context = complete(port, PROMPT, max_tokens=2, echo=True, user="dev-1")
        assert status == 200, with_context
        assert with_context["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20
        assert (
            with_context["choices"][0]["text"].startswith(PROMPT)
            and "# billing/" not in with_context["choices"][0]["text"]
        )
        # Typing on: the block stays, so the engine reuses the block and the prompt it saw before.
        reused = health(port)["stats"]["prefix_cache"]["reused_tokens"]
        status, typed = complete(port, PROMPT + "clo", max_tokens=2, user="dev-1")
        assert status == 200, typed
        after = health(port)
        assert after["stats"]["prefix_cache"]["reused_tokens"] - reused >= with_context["usage"]["prompt_tokens"] - 3
        assert after["context"]["built"] == 1 and after["context"]["kept"] == 1
        # A new commit, the dataset updated: the running server picks it up and uses the new definition.
        prompt = "from billing.keys import rotate_ledger_keys\n\n\ndef rotate_all(store):\n    rotate_ledger_keys("
        _, old = complete(port, prompt, max_tokens=1)
        version = after["context"]["version"]
        repo.commit(
            {"billing/keys.py": '"""Keys."""\n\n\ndef rotate_ledger_keys(store, every_days=30):\n    return 1\n'}
        )
        update(dataset)
        wait_for(port, lambda body: body["context"]["version"] != version and body["context"]["files"] == 12)
        _, new = complete(port, prompt, max_tokens=1)
        assert new["usage"]["prompt_tokens"] > old["usage"]["prompt_tokens"]  # its definition is now in the block
    finally:
        stop(proc)


def test_a_server_without_a_dataset_has_no_context_and_a_bad_folder_is_a_clear_error(
    tiny_model: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.serve", str(tiny_model), "--context-dataset", str(tmp_path / "empty")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "holds no dataset" in done.stderr and "Traceback" not in done.stderr
