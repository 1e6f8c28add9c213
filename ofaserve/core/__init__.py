"""Shared types below every stage: no paddle, no Triton."""
