"""The dashboard's tabs: Repos, Jobs, Models, Server, Settings."""
