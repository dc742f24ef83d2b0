"""The agent's HTTP API: :mod:`agent.api.server` binds an :class:`~agent.core.Agent` to 127.0.0.1,
:mod:`agent.api.client` is the typed client that the CLI and the tray app use.

The API is declared once, in :mod:`agent.api.spec`. The client side imports neither the server nor
:mod:`agent.core`, so ``ui/`` stays a thin client.
"""

API_PREFIX = "/api/v1/"
