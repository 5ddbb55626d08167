"""The life of long jobs: checkpoints, progress counters, log lines, the event stream, run time."""
