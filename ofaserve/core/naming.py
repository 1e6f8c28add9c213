"""Names every stage agrees on: the Triton models behind a text model (a width's own
names come from ``core.width.Width``)."""
from __future__ import annotations


def encoder_name(model: str) -> str:
    """The encoder (token ids -> logits) behind text model ``model``."""
    return f"{model}_encoder"
