"""One concrete packet through a switch's flows: the engine under ``vfence trace``, and
the unit tests' model of a switch (never instead of the lab's real Open vSwitch).

Models what vfence's flows use, as OVS does it: priorities, value/mask matches with
prerequisites (a field the packet lacks never matches), goto, write-metadata, set-field,
move, push/pop VLAN, resubmit, conntrack (the packet's connection state is given),
output, conjunctive matches (conjunction actions, conj_id), learn() (the flow it
installs joins the pipeline) and dec_ttl (IP packets start with TTL 64 unless told).
Anything else (a hand-added flow's NORMAL, say) raises :class:`Unmodelled`: the walk
never guesses.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from vfence.controller.flows import OFPP_CONTROLLER, OFPP_IN_PORT, Flow, conjunctions, learned

OFPP_MAX = 0xFFFFFF00  # ports from here on are reserved (OpenFlow 1.3)
ENTRY_ZERO = ("metadata", *(f"reg{i}" for i in range(12)))


MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Unmodelled(Exception):
    """The walk met something it does not model."""


def _int(v: Any) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, str) and MAC.match(v):  # (fd00:abcd::5:6:17 has 5 colons too)
        return int(v.replace(":", ""), 16)
    return int(ipaddress.ip_address(v))


def _matches(pkt: dict[str, Any], m: Iterable[tuple[str, Any]]) -> bool:
    for field, want in m:
        if field not in pkt:
            return False
        value, mask = (_int(want[0]), _int(want[1])) if isinstance(want, tuple) else (
            _int(want), -1)
        if _int(pkt[field]) & mask != value & mask:
            return False
    return True


class Pipeline:
    def __init__(self, flows: Iterable[Flow]) -> None:
        self.flows = sorted(flows, key=lambda f: (f.table, -f.priority))
        self.outputs: list[tuple[int, dict[str, Any]]] = []
        self.trace: list[Flow] = []
        self.learned: list[Flow] = []  # what learn() installed, in order

    def run(self, pkt: dict[str, Any], ct_state: int = 0x21) -> list[tuple[int, dict]]:
        """Ports (with the frame as sent) that the packet entering ``in_port`` reaches;
        ``ct_state`` is what conntrack says after ct() (default tracked + new)."""
        self.outputs, self.trace = [], []
        p = dict(pkt)
        p.setdefault("vlan_vid", 0)
        if p.get("eth_type") in (0x0800, 0x86DD):
            p.setdefault("nw_ttl", 64)
        if p["vlan_vid"] & 0x1000:
            p.setdefault("vlan_pcp", 0)  # a tag always has a PCP
        for f in ENTRY_ZERO:
            p[f] = 0
        p["ct_state"] = 0
        self._table(0, p, ct_state, depth=0)
        return self.outputs

    def ports(self, pkt: dict[str, Any], ct_state: int = 0x21) -> list[int]:
        return [port for port, _ in self.run(pkt, ct_state)]

    def _table(self, table: int, p: dict[str, Any], ct: int, depth: int) -> None:
        if depth >= 64:
            raise Unmodelled("resubmit/goto loop (64 lookups deep)")
        f = self._lookup(table, p)
        if f is not None:
            self.trace.append(f)
            self._apply(f, p, ct, depth)

    def _lookup(self, table: int, p: dict[str, Any]) -> Flow | None:
        """OVS's lookup (lib/classifier.c): the best ordinary flow, unless a conjunctive
        match above it completes; then the best ordinary flow with conj_id set."""
        hard, soft = None, defaultdict(list)
        for f in self.flows:  # highest priority first
            if f.table == table and _matches(p, f.match):
                if conjunctions(f):
                    soft[f.priority].append(f)
                else:
                    hard = f
                    break
        for prio in sorted(soft, reverse=True):
            if hard is not None and prio <= hard.priority:
                break
            got: dict[int, set[int]] = defaultdict(set)
            for f in soft[prio]:
                for _, conj_id, k, n in conjunctions(f):
                    got[conj_id].add(k)
                    if len(got[conj_id]) == n:
                        q = dict(p, conj_id=conj_id)
                        return next((g for g in self.flows if g.table == table
                                     and not conjunctions(g) and _matches(q, g.match)), None)
        return hard

    def _apply(self, f: Flow, p: dict[str, Any], ct: int, depth: int) -> None:
        nxt = None
        for ins in f.instructions:
            if ins[0] == "meta":
                p["metadata"] = (p["metadata"] & ~ins[2]) | (ins[1] & ins[2])
            elif ins[0] == "goto":
                nxt = ins[1]
            elif ins[0] == "apply":
                for act in ins[1]:
                    if self._action(act, p, ct, depth):
                        return
            elif ins[0] != "meter":  # write-actions, clear-actions: not vfence's
                raise Unmodelled(f"instruction {ins[0]!r} (table {f.table}, priority "
                                 f"{f.priority}) is not modelled")
        if nxt is not None:
            if nxt <= f.table:
                raise Unmodelled(f"goto from table {f.table} back to {nxt}")
            self._table(nxt, p, ct, depth + 1)

    def learn(self, act: tuple, p: dict[str, Any]) -> None:
        """Install (or replace) the flow a learn() describes; its output port is what the
        named field holds now."""
        f = learned(act)
        *sets, (_, field) = f.instructions[0][1]
        f = Flow(f.table, f.priority, f.match, (("apply", (*sets, ("output", p[field]))),),
                 f.cookie)
        self.flows = sorted([g for g in self.flows if g.key != f.key] + [f],
                            key=lambda f: (f.table, -f.priority))
        self.learned.append(f)

    def _action(self, act: tuple, p: dict[str, Any], ct: int, depth: int) -> bool:
        """Apply one action; True when processing of this packet ends here."""
        kind = act[0]
        if kind == "set" and act[1] == "vlan_tci":  # PCP, CFI (present), VID
            p["vlan_vid"], p["vlan_pcp"] = act[2] & 0x1FFF, act[2] >> 13
        elif kind == "set":
            p[act[1]] = act[2]
        elif kind == "move":
            v = p.get(act[1])
            p[act[2]] = v & (1 << act[3]) - 1 if isinstance(v, int) else v
        elif kind == "dec_ttl":  # OVS: an expiring TTL goes to the controller, not on
            if p.get("nw_ttl", 64) <= 1:
                self.outputs.append((OFPP_CONTROLLER, dict(p, reason="invalid_ttl")))
                return True
            p["nw_ttl"] = p.get("nw_ttl", 64) - 1
        elif kind == "push_vlan":
            p["vlan_vid"], p["vlan_pcp"] = 0x1000, 0
        elif kind == "pop_vlan":
            p["vlan_vid"] = 0
            p.pop("vlan_pcp", None)
        elif kind == "learn":
            self.learn(act, p)
        elif kind == "resubmit":
            self._table(act[1], p, ct, depth + 1)
        elif kind == "ct":
            if act[4] != 0xFF:
                p["ct_state"] = ct
                self._table(act[4], p, ct, depth + 1)
                return True
        elif kind == "output":
            if act[1] >= OFPP_MAX and act[1] not in (OFPP_IN_PORT, OFPP_CONTROLLER):
                raise Unmodelled(f"output to reserved port {act[1]:#x} (NORMAL, FLOOD, ...)")
            port = p["in_port"] if act[1] == OFPP_IN_PORT else act[1]
            if act[1] == OFPP_CONTROLLER or port != p["in_port"] or act[1] == OFPP_IN_PORT:
                self.outputs.append((port, dict(p)))
        else:
            raise Unmodelled(f"action {act} is not modelled")
        return False
