"""The agent's HTTP API: :mod:`agent.api.server` binds an :class:`~agent.core.Agent` to 127.0.0.1,
:mod:`agent.api.client` is the typed client that the CLI and the tray app use.

The client side imports neither the server nor :mod:`agent.core`, so ``ui/`` stays a thin client.
"""

API_PREFIX = "/api/v1/"

# Agent methods callable as ``POST /api/v1/<method>`` with a JSON object of keyword arguments.
RPC_METHODS = frozenset(
    {
        "status",
        "clear_error",
        "agent_log",
        "add_repo",
        "remove_repo",
        "list_repos",
        "dataset",
        "pause_watching",
        "resume_watching",
        "check_for_changes",
        "list_jobs",
        "get_job",
        "cancel_job",
        "retry_job",
        "job_log",
        "retrain_now",
        "list_models",
        "get_model",
        "deploy_model",
        "rollback",
        "server_status",
        "start_server",
        "stop_server",
        "test_completion",
        "vscode_settings",
        "get_settings",
        "update_settings",
    }
)
