"""Names every stage agrees on: width labels and Triton model names."""
from __future__ import annotations


def width_key(width: float) -> str:
    """Canonical short label of a width: 0.6666666666666666 -> '0.6667'."""
    return f"{float(width):.4f}".rstrip("0").rstrip(".") if float(width) != 1.0 else "1.0"


def model_name(name: str, width: float) -> str:
    """The text model a client calls for one width: ``bert`` at 0.6667 -> ``bert_w67``."""
    return f"{name}_w{round(float(width) * 100)}"


def encoder_name(model: str) -> str:
    """The encoder (token ids -> logits) behind text model ``model``."""
    return f"{model}_encoder"
