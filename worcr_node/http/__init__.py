"""The HTTP side of a node: JSON API (and later the web UI and metrics)."""
