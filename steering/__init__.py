"""Steering: fleet registry, ranking, content-steering server, dashboard."""
