"""A subnet of the once-for-all supernet: a width (heads and FFN neurons kept) and a depth
(encoder layers kept).

``Depth`` is parsed once, like ``Width``, and owns the layer choice rule: DynaBERT's
(Hou et al., 2020), which keeps layers spread evenly over the stack, the first always
among them. ``Subnet`` pairs the two and owns their spellings: ``key`` labels results and
folders ("0.6667" at full depth, as before depths existed; "0.6667_d0.5" otherwise),
``model_name`` the Triton models ("bert_w67", "bert_w67_d50").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ofaserve.core.errors import OfaserveError
from ofaserve.core.width import Multiplier, Width


class Depth(Multiplier):
    """The fraction of the encoder's layers kept (``layers`` says which)."""
    KIND = "depth"
    EXAMPLE = "0.5"

    @property
    def full(self) -> bool:
        return self.value == 1.0

    def layers(self, num_layers: int) -> list[int]:
        """The encoder layers this depth keeps (0-based), DynaBERT's rule: ``n = L x depth``
        layers (rounded half up), layer ``floor(i / depth)`` for i < n. It drops every
        ``1 / (1 - depth)``-th layer, the rule as the paper states it (layer l is dropped when
        (l + 1) mod 1/(1 - depth) = 0): 0.5 keeps 0, 2, 4 of 6; 0.75 keeps 0, 1, 2, 4, 5.
        DynaBERT's code rounds n with Python's round (half to even), which keeps 4 of 6
        layers at 0.75, the same as 0.6667; half up keeps the paper's 5."""
        if num_layers < 1:
            raise OfaserveError(f"a model with {num_layers} layers has no depth to choose")
        n = max(1, math.floor(num_layers * self.value + 0.5))
        return [min(num_layers - 1, math.floor(i / self.value + 1e-9)) for i in range(n)]

    def __str__(self) -> str:
        return self.key


FULL_DEPTH = Depth(1.0)


def teacher_layers(kept: list[int], num_layers: int) -> list[int]:
    """For each kept layer, the teacher layer whose output its output is distilled towards
    (DynaBERT's hidden-state mapping): the last layer before the next kept one, so a kept
    layer stands for itself and the layers dropped after it, and the last kept layer for
    the top of the teacher. All layers kept: each layer maps to itself."""
    ends = kept[1:] + [num_layers]
    return [end - 1 for end in ends]


def check_depths(depths: Iterable[float | Depth], num_layers: int) -> list[Depth]:
    """The depths of a supernet, deepest first: 1.0 among them, and no two keeping the same
    number of layers of a ``num_layers`` encoder (they would be one subnet under two names)."""
    parsed = sorted({Depth.parse(d) for d in depths}, reverse=True)
    if not parsed or not parsed[0].full:
        raise OfaserveError(f"the depths must include 1.0 (got {', '.join(d.key for d in parsed) or 'none'})")
    seen: dict[int, Depth] = {}
    for d in parsed:
        n = len(d.layers(num_layers))
        if n in seen:
            raise OfaserveError(f"depths {seen[n].key} and {d.key} both keep {n} of the {num_layers} layers: "
                                "pass one of them")
        seen[n] = d
    return parsed


@dataclass(frozen=True, order=True)
class Subnet:
    """One trained (width, depth) of a supernet."""
    width: Width
    depth: Depth = field(default=FULL_DEPTH)

    @classmethod
    def of(cls, width: Width | float | str, depth: Depth | float | str = 1.0) -> Subnet:
        return cls(Width.parse(width), Depth.parse(depth))

    @property
    def key(self) -> str:
        return self.width.key if self.depth.full else f"{self.width.key}_d{self.depth.key}"

    def model_name(self, prefix: str) -> str:
        """``bert`` at width 0.6667: ``bert_w67``; at depth 0.5 too: ``bert_w67_d50``."""
        name = self.width.model_name(prefix)
        return name if self.depth.full else f"{name}_d{self.depth.percent}"

    def describe(self, num_layers: int | None = None) -> str:
        """For tables: ``width 0.6667`` or ``width 0.6667, depth 0.5 (3 of 6 layers)``."""
        if self.depth.full:
            return f"width {self.width.key}"
        layers = f" ({len(self.depth.layers(num_layers))} of {num_layers} layers)" if num_layers else ""
        return f"width {self.width.key}, depth {self.depth.key}{layers}"

    @property
    def cost(self) -> float:
        """The fraction of the encoder's matmuls it runs (width x depth), for sizing work."""
        return self.width.value * self.depth.value

    def __str__(self) -> str:
        return self.key


def grid(widths: Iterable[float | Width], depths: Iterable[float | Depth] = (1.0,)) -> list[Subnet]:
    """Every (width, depth), deepest first and widest first within a depth: the full model
    first, the smallest last (the sandwich rule's extremes). With depth 1.0 alone it is the
    widths in their old order."""
    ws = sorted({Width.parse(w) for w in widths}, reverse=True)
    ds = sorted({Depth.parse(d) for d in depths}, reverse=True)
    return [Subnet(w, d) for d in ds for w in ws]


# ----------------------------------------------------------------------------- results
# A compress manifest's results keep full-depth subnets under "widths" (keyed by width, as
# before depths existed) and the others under "depths" -> depth key -> width key.
def results_by_subnet(results: dict[str, Any]) -> Iterator[tuple[Subnet, dict[str, Any]]]:
    """(subnet, its results) for every subnet of a compress manifest's ``results``,
    full depth first, in the order they were written."""
    for w, r in (results.get("widths") or {}).items():
        yield Subnet.of(w), r
    for d, by_width in (results.get("depths") or {}).items():
        for w, r in by_width.items():
            yield Subnet.of(w, d), r


def store_result(results: dict[str, Any], subnet: Subnet, entry: dict[str, Any]) -> None:
    """Put ``entry`` where ``results_by_subnet`` reads it."""
    if subnet.depth.full:
        results.setdefault("widths", {})[subnet.width.key] = entry
    else:
        results.setdefault("depths", {}).setdefault(subnet.depth.key, {})[subnet.width.key] = entry
