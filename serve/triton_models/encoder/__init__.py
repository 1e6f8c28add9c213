"""Encoder model; ``runtimes`` is also importable in-process (benchmark baselines)."""
