"""Limits: concurrency, token bucket, fixed and sliding windows, for jobs and for running code."""
