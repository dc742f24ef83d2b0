"""Tests of the agent daemon."""
