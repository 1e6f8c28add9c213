"""Triton python-backend model sources, copied verbatim into generated repositories."""
