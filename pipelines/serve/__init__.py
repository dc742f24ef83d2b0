"""Serve completions: engines (embedded PyTorch, Triton) behind a FauxPilot/OpenAI-compatible HTTP API."""
