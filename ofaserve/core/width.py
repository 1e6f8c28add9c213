"""A width of the once-for-all supernet: the fraction of attention heads and FFN neurons kept.

Parsed once, where a user or a file gives it (``Width.parse``: "0.6667", 0.6666666666666666,
"2/3"), then passed as a value that owns its spellings: ``key`` labels results and folders
("0.6667"), ``model_name`` the Triton models ("bert_w67"). Two widths are the same width
when they agree to ``TOLERANCE`` (a width typed as 0.6667 is the trained 2/3).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Iterable, Self

from ofaserve.core.errors import OfaserveError

TOLERANCE = 1e-3


@dataclass(frozen=True, order=True)
class Multiplier:
    """A fraction in (0, 1] of the supernet (``Width``; ``core.subnet.Depth``), parsed once:
    "0.6667", 0.6666666666666666 and "2/3" are one value, which owns its spellings."""
    value: float
    KIND: ClassVar[str] = "multiplier"
    EXAMPLE: ClassVar[str] = "0.5"

    def __post_init__(self) -> None:
        value = float(self.value)
        if not 0.0 < value <= 1.0:
            raise OfaserveError(f"a {self.KIND} must be in (0, 1], not {self.value!r}")
        object.__setattr__(self, "value", value)

    @classmethod
    def parse(cls, text: str | float | Multiplier) -> Self:
        if isinstance(text, cls):
            return text
        try:
            value = float(Fraction(str(text).strip())) if not isinstance(text, (int, float)) else float(text)
        except (ValueError, ZeroDivisionError):
            raise OfaserveError(f"a {cls.KIND} must be a number in (0, 1] such as {cls.EXAMPLE}, not {text!r}") from None
        return cls(value)

    def __float__(self) -> float:
        return self.value

    @property
    def key(self) -> str:
        """Canonical short label: 0.6666666666666666 -> '0.6667', 1.0 -> '1.0'."""
        return "1.0" if self.value == 1.0 else f"{self.value:.4f}".rstrip("0").rstrip(".")

    @property
    def percent(self) -> int:
        return round(self.value * 100)

    def matches(self, other: Multiplier | float) -> bool:
        return abs(self.value - float(other)) < TOLERANCE

    def among(self, trained: Iterable[Multiplier | float]) -> Self:
        """The trained value this one names; an error listing the trained ones otherwise."""
        trained = [type(self).parse(v) for v in trained]
        for v in trained:
            if self.matches(v):
                return v
        raise OfaserveError(f"{self.KIND} {self.key} was not trained: choose one of "
                            f"{', '.join(v.key for v in trained)}")

    def __str__(self) -> str:
        return self.key


class Width(Multiplier):
    """The fraction of attention heads and FFN neurons kept."""
    KIND = "width"
    EXAMPLE = "0.6667"

    def model_name(self, prefix: str) -> str:
        """The text model a client calls for this width: ``bert`` at 0.6667 -> ``bert_w67``."""
        return f"{prefix}_w{self.percent}"


AUTO = "auto"


def parse_width_choice(text: str | float | Width) -> Width | str:
    """A width, or ``AUTO`` (``--width_mult auto``: the export chooses one by a rule)."""
    if isinstance(text, str) and text.strip().lower() == AUTO:
        return AUTO
    return Width.parse(text)
