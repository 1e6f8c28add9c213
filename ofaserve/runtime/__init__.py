"""Encoder runners, one per inference runtime, and the batch shaping they share.

``runtimes.py`` is copied as-is into generated Triton repositories (next to the
python-backend model.py files), so it imports nothing from this package.
"""
