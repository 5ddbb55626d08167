"""The demo shown by `worcr dev --demo`: a tiny worker and a few jobs."""
