"""The headless player: ABR rules, a trace-driven simulator, an HTTP player and a load test."""
