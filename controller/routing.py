"""Routers as the compiler sees them: which segments each joins, by tag, and the one
conntrack zone they share. Pure and cached on the inputs (routers, segment specs, tags).

A router's segments are its *domain*: a VM of one of them matters (is recognised and
reachable) on every host where any segment of the domain is present, as a VM of a plain
segment does where its segment is. The addresses of a domain never repeat (its subnets do
not overlap and every VM's addresses sit in its segment's subnet), so one conntrack zone
serves switched and routed traffic of all its segments alike: a routed connection is
tracked in the same zone at both ends, whichever segment each end is in. The zone is
the router's own (ROUTER_ZONE_BASE + its number, above every segment tag), so it never
moves when segments get tags or join and leave the router; the number is the registry's
(store: routers), so it never moves when other routers come and go either. A router the
registry has not numbered yet (its policy not stored) routes nothing.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from .model import NetworkState, Router, SegmentSpec
from .pipeline import ROUTER_ZONE_BASE


class Routed(NamedTuple):
    """What a VM's flows need to know of the router that joins its segment."""

    router: int  # its number in the registry (the ROUTER cookie's id)
    mac: str
    zone: int  # the conntrack zone of every segment it joins (its own, above every tag)


class Domain(NamedTuple):
    routed: Routed
    name: str
    tags: tuple[int, ...]  # tags of the segments it joins that have one (VMs were there)
    specs: tuple[tuple[int, SegmentSpec], ...]  # (tag, spec) of those


def domains(state: NetworkState) -> dict[int, Domain]:
    """Segment tag -> the domain of the router that joins it (routed segments only)."""
    return _domains(state.policy.routers, state.policy.segment_specs,
                    tuple(sorted(state.segment_tags.items())),
                    tuple(sorted(state.router_numbers.items())))


@functools.lru_cache(maxsize=8)
def _domains(routers: tuple[Router, ...], specs: tuple[SegmentSpec, ...],
             tags: tuple[tuple[str, int], ...], numbers: tuple[tuple[str, int], ...]
             ) -> dict[int, Domain]:
    tag_of, spec_of, number_of = dict(tags), {s.name: s for s in specs}, dict(numbers)
    out: dict[int, Domain] = {}
    for r in routers:
        mine = sorted((tag_of[n], spec_of[n]) for n in r.segments
                      if tag_of.get(n) and n in spec_of)
        i = number_of.get(r.name)
        if not mine or i is None:
            continue
        d = Domain(Routed(i, r.mac, ROUTER_ZONE_BASE + i), r.name, tuple(t for t, _ in mine),
                   tuple(mine))
        out.update((t, d) for t, _ in mine)
    return out


def zone(state: NetworkState, segment_id: int) -> int:
    """The conntrack zone of a segment: its router's, else its own tag."""
    d = domains(state).get(segment_id)
    return d.routed.zone if d is not None else segment_id


def reach(state: NetworkState, segment_id: int) -> tuple[int, ...]:
    """The segments whose presence on a host makes a VM of ``segment_id`` matter there:
    its router's domain, or the segment alone."""
    d = domains(state).get(segment_id)
    return d.tags if d is not None else (segment_id,)


def gateway_of(state: NetworkState, segment_id: int, version: int = 4) -> tuple[str, str] | None:
    """(router MAC, gateway address) of a routed segment, for answers sent in the router's
    name (ICMP time exceeded)."""
    d = domains(state).get(segment_id)
    if d is None:
        return None
    spec = dict(d.specs)[segment_id]
    gw = spec.gateway if version == 4 else spec.gateway6
    return (d.routed.mac, gw) if gw else None


def answering_gateway(state: NetworkState, dpid: int, port_no: int, version: int = 4
                      ) -> tuple[str, str] | None:
    """(router MAC, gateway) that answers, in its router's name, the VM sending on
    ``dpid`` port ``port_no`` (bound or standby there): the gateway of that VM's own
    segment. None for a port no VM of a routed IPv4 segment sends on."""
    vm = state.vms.get(port_owners(state).get((dpid, port_no), ""))
    return None if vm is None else gateway_of(state, vm.segment_id, version)


_OWNERS: list = [None, {}]  # [the state indexed, its index]


def port_owners(state: NetworkState) -> dict[tuple[int, int], str]:
    """(dpid, port) -> the VM bound or standing by there, indexed once per state (the
    controller swaps its state whole, never edits it in place): a packet-in looks its
    sender up in O(1), not over every binding."""
    if _OWNERS[0] is not state:
        index = {tuple(b.port): n for places in (state.standby, state.bindings)
                 for n, b in places.items()}
        _OWNERS[:] = [state, index]
    return _OWNERS[1]
