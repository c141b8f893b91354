"""What the policy allows from each group to each other: the console's matrix.

A pure reading of the policy, in the compiler's order: an isolation pair denies everything
between its groups, above any rule; then the rules in order, the first that matches a
connection deciding it; then the default (``intra_group`` within a group, ``inter_group``
between groups). A rule that names part of a group (one VM, a CIDR, a MAC) or part of
the traffic (a protocol, ports, an ICMP type, an ethertype) decides only that part, so
the rules after it still matter; the first rule that covers both groups whole and all
traffic decides the rest, and nothing after it is listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .model import Endpoint, Policy, Rule

Verdict = Literal["isolated", "allowed", "denied", "partly allowed"]


@dataclass(frozen=True)
class Line:
    """One step of a cell's story: a rule that applies, or the default."""

    name: str  # the rule's name, or "default" / "isolation pair"
    action: str  # allow | deny | deny-and-log
    what: str  # the traffic it decides: "tcp/8443", "all traffic", "from VM web-1: all"


@dataclass(frozen=True)
class Cell:
    src: str
    dst: str
    verdict: Verdict
    lines: tuple[Line, ...]

    @property
    def allowed(self) -> tuple[str, ...]:
        """What gets through, in short: ("tcp/8443",), ("all traffic",) or ()."""
        return tuple(ln.what for ln in self.lines if ln.action == "allow")


def _covers(e: Endpoint, group: str, members: dict[str, set[str]]) -> str | None:
    """"whole" if the endpoint is the whole group, "part" if some of it, else None."""
    if e.kind == "any" or (e.kind == "group" and e.value == group):
        return "whole"
    if e.kind == "vm":
        return "part" if e.value in members.get(group, set()) else None
    if e.kind in ("cidr", "mac"):
        return "part"  # may be some of the group's VMs
    return None


def _traffic(r: Rule) -> str:
    """The traffic a rule names, in short."""
    if r.ethertype is not None:
        return f"ethertype {r.ethertype:#06x}"
    if r.protocol == "any":
        return "all traffic"
    ports = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in r.ports)
    icmp = "" if r.icmp_type is None else f" type {r.icmp_type}" + (
        "" if r.icmp_code is None else f" code {r.icmp_code}")
    return f"{r.protocol}{'/' + ports if ports else ''}{icmp}"


def cell(policy: Policy, src: str, dst: str, members: dict[str, set[str]]) -> Cell:
    """From group ``src`` to group ``dst`` (``members``: group -> its VMs' names)."""
    if (src, dst) in policy.isolation or (dst, src) in policy.isolation:
        return Cell(src, dst, "isolated", (Line("isolation pair", "deny", "all traffic"),))
    lines: list[Line] = []
    for r in policy.rules:
        a, b = _covers(r.src, src, members), _covers(r.dst, dst, members)
        if a is None or b is None:
            continue
        what = _traffic(r)
        parts = [f"{side} {e.kind} {e.value}" for side, e, c in
                 (("from", r.src, a), ("to", r.dst, b)) if c == "part"]
        lines.append(Line(r.name, r.action, f"{' '.join(parts)}: {what}" if parts else what))
        if not parts and what == "all traffic":
            break
    else:
        default = policy.intra_group if src == dst else policy.inter_group
        lines.append(Line("default", default, "everything else"))
    actions = {"allow" if ln.action == "allow" else "deny" for ln in lines}
    verdict: Verdict = "partly allowed" if len(actions) > 1 else \
        "allowed" if actions == {"allow"} else "denied"
    return Cell(src, dst, verdict, tuple(lines))


def matrix(policy: Policy, groups: list[str], members: dict[str, set[str]]
           ) -> list[list[Cell]]:
    """One row per source group, one cell per destination group, in ``groups`` order."""
    return [[cell(policy, s, d, members) for d in groups] for s in groups]
