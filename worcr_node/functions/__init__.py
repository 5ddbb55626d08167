"""User functions (hooks): their model, the sandboxes that run them, and the runner."""
