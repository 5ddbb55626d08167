"""Job modules loaded by worker subprocesses in the integration tests (`python -m worcr.worker`)."""
