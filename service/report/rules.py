"""`--fail-if` rules: conditions on the per-head differences of a comparison, for CI.

    RULE   := STAT CHANGE OP NUMBER["%"] ["on" WHERE]
    CHANGE := drop (A − B) | rise (B − A) | change (|B − A|)
    OP     := ">" | ">="
    WHERE  := any head (default) | all heads | head L.H | layer L | CLASS heads | mean

e.g. ``induction drop > 0.2 on any head``, ``entropy change >= 10% on layer 3``, ``induction drop
> 0.1 on induction heads`` (the heads whose most frequent class in A is induction), ``self rise
> 0.05 on mean`` (the mean over all heads). A number with % is relative to |A's mean| of that head.
A rule holds where its condition is true; `evaluate` names those heads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from attnscope.kernels.facts import HEAD_STAT_NAMES

CHANGES = ("drop", "rise", "change")
_RULE = re.compile(
    r"^\s*(?P<stat>\w+)\s+(?P<change>\w+)\s*(?P<op>>=|>)\s*(?P<number>[-+]?\d*\.?\d+(?:e[-+]?\d+)?)\s*"
    r"(?P<percent>%)?\s*(?:on\s+(?P<where>.+?))?\s*$",
    re.IGNORECASE,
)
_HEAD = re.compile(r"^(?:head\s+)?L?(\d+)\s*[.:]\s*H?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    text: str
    stat: str
    change: str
    inclusive: bool
    threshold: float
    relative: bool
    where: str  # "any" | "all" | "mean" | "head" | "layer" | "class"
    layer: int | None = None
    head: int | None = None
    label: str | None = None


def parse_rule(text: str, classes: tuple[str, ...] = ()) -> Rule:
    """A Rule, or ValueError saying what was expected."""
    m = _RULE.match(text)
    if not m:
        raise ValueError(
            f"--fail-if {text!r}: expected 'STAT drop|rise|change >|>= NUMBER[%] [on WHERE]', "
            "e.g. 'induction drop > 0.2 on any head'"
        )
    stat, change = m["stat"], m["change"].lower()
    if stat not in HEAD_STAT_NAMES:
        raise ValueError(
            f"--fail-if {text!r}: statistic must be one of {', '.join(HEAD_STAT_NAMES)}, got {stat!r}"
        )
    if change not in CHANGES:
        raise ValueError(f"--fail-if {text!r}: expected drop, rise or change, got {change!r}")
    base = dict(
        text=text.strip(),
        stat=stat,
        change=change,
        inclusive=m["op"] == ">=",
        threshold=float(m["number"]),
        relative=bool(m["percent"]),
    )
    where = " ".join((m["where"] or "any head").lower().split())
    if where in ("any head", "any", "any heads"):
        return Rule(**base, where="any")
    if where in ("all heads", "every head", "all"):
        return Rule(**base, where="all")
    if where in ("mean", "the mean", "mean head"):
        return Rule(**base, where="mean")
    if (layer := re.fullmatch(r"layer\s+(\d+)", where)) is not None:
        return Rule(**base, where="layer", layer=int(layer[1]))
    if (head := _HEAD.match(where)) is not None:
        return Rule(**base, where="head", layer=int(head[1]), head=int(head[2]))
    if where.endswith(" heads") and where[: -len(" heads")] in classes:
        return Rule(**base, where="class", label=where[: -len(" heads")])
    known = ", ".join(f"'{c} heads'" for c in classes)
    raise ValueError(
        f"--fail-if {text!r}: 'on' takes 'any head', 'all heads', 'mean', 'head L.H', 'layer L' or "
        f"a class ({known}), got {where!r}"
    )


def _amount(rule: Rule, a: float, b: float) -> float:
    diff = {"drop": a - b, "rise": b - a, "change": abs(b - a)}[rule.change]
    if rule.relative:
        return 100.0 * diff / abs(a) if a != 0 else (0.0 if diff == 0 else float("inf"))
    return diff


def _holds(rule: Rule, a: float, b: float) -> bool:
    amount = _amount(rule, a, b)
    return amount >= rule.threshold if rule.inclusive else amount > rule.threshold


def evaluate(rule: Rule, a_mean: list[list[float]], b_mean: list[list[float]], a_classes) -> list[str]:
    """Where `rule` holds: head names ("L1.H2"), ["mean"], or [] where it does not."""
    layers, heads = len(a_mean), len(a_mean[0])
    if rule.where == "mean":
        mean = lambda m: sum(map(sum, m)) / (layers * heads)  # noqa: E731
        return ["mean"] if _holds(rule, mean(a_mean), mean(b_mean)) else []
    if rule.where in ("head", "layer") and not 0 <= rule.layer < layers:
        raise ValueError(f"--fail-if {rule.text!r}: layer must be in [0, {layers}), got {rule.layer}")
    if rule.where == "head" and not 0 <= rule.head < heads:
        raise ValueError(f"--fail-if {rule.text!r}: head must be in [0, {heads}), got {rule.head}")
    chosen = [
        (layer, head)
        for layer in range(layers)
        for head in range(heads)
        if rule.where in ("any", "all")
        or (rule.where == "layer" and layer == rule.layer)
        or (rule.where == "head" and (layer, head) == (rule.layer, rule.head))
        or (rule.where == "class" and a_classes[layer][head] == rule.label)
    ]
    hits = [f"L{lh[0]}.H{lh[1]}" for lh in chosen if _holds(rule, a_mean[lh[0]][lh[1]], b_mean[lh[0]][lh[1]])]
    if rule.where == "all" and len(hits) != len(chosen):
        return []
    return hits
