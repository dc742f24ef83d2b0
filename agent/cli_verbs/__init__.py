"""The ``repopilot`` verbs that talk to the running agent: agent, repo, job, model, retrain, server.

Each module has the ``add_parser(sub)`` / ``run(args)`` pair that :mod:`agent.cli` registers; all of them are
clients of :class:`agent.api.client.AgentClient` and hold no logic of their own.
"""
