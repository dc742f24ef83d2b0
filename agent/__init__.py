"""The repopilot agent: the daemon that owns state and schedules the pipelines (grows in later work)."""
