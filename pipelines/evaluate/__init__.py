"""Evaluate models on held-out code of the dataset's repos, and gate a deploy on "not worse".

- ``samples``: the held-out files (validation records, or files changed after a commit: the time split).
- ``identifiers``: the repository's own names, and the lines that use them.
- ``tasks``: next-line completion tasks and how answers are scored.
- ``metrics``: one model's loss and completions on those files.
- ``compare``: paired bootstrap intervals, verdicts and the gate; ``report``: report.json / report.md.
- ``cli``: ``repopilot eval`` / ``python -m pipelines.evaluate``.
"""
