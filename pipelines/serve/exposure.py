"""Who may reach the completion API: the one rule for `repopilot serve`, the compose stack and the agent.

A model fine-tuned on internal code reproduces internal code, so the API listens on loopback by default;
listening on any other address exposes it to the network and is refused without an API key.
"""

from __future__ import annotations

import ipaddress

DEFAULT_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, api_key: str | None, what: str = "the completion API") -> str | None:
    """Why serving on ``host`` with ``api_key`` is refused, or None when it is allowed."""
    if is_loopback(host) or (api_key or "").strip():
        return None
    return (
        f"Listening on {host} would let anyone who can reach this machine read completions of your internal code "
        f"from {what}, and no API key is set. Set one (`[server] api_key`, or `--api-key-file` for `repopilot "
        "serve`; `repopilot server vscode` then prints the fauxpilot.token setting for the IDE), or listen on "
        f"{DEFAULT_HOST}."
    )


def check_address(host: str) -> str | None:
    """Why ``host`` cannot be listened on as given (it must be an IP address or localhost), or None."""
    if host.strip().lower() == "localhost":
        return None
    try:
        ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return f"{host!r} is not an IP address: give one of this machine's addresses, e.g. {DEFAULT_HOST} or 0.0.0.0"
    return None
