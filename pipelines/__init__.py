"""The work of repopilot: each subpackage is a program that runs alone, reads files, writes files."""
