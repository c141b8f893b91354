"""The switches as the controller sees them, and the one way their flows change.

Bookkeeping only (no policy, no database): which switches are connected and ready, the
ports and flows each reported, and :meth:`Switches.program`, which brings every ready
switch to the compiler's output in a safe order and puts the switches already changed
back if one refuses, so no change is left half-applied across the network.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from .compiler import count_by_table
from .desired import Desired
from .errors import NotFound, Refused, VfenceError
from .flows import Flow, Owner, cookie_owner
from .metrics import Metrics
from .model import dpid_str
from .reconcile import FlowDiff, additions_only, apply_diff, diff

LOG = logging.getLogger("vfence.switches")


class Programmer(Protocol):
    def program(self, dpid: int, changes: FlowDiff) -> None:
        """Commit ``changes`` on the switch atomically (bundle) and wait for the barrier.
        Raises on failure."""

    def read_flows(self, dpid: int, table: int | None = None, owner: Owner | None = None
                   ) -> list[tuple[Flow, int, int]]:
        """(flow, packets, bytes) for every flow on the switch (of ``table``, with a
        cookie of ``owner``, when given: the switch filters), read now."""


class Held(Mapping[int, frozenset[Flow]]):
    """What each connected switch holds, as far as we know: a flow set, or "exactly what
    this compiled result wants for it" (its set is made only when someone reads it, so
    a small change never copies a whole switch)."""

    def __init__(self) -> None:
        self.known: dict[int, frozenset[Flow] | Desired] = {}

    def __getitem__(self, dpid: int) -> frozenset[Flow]:
        held = self.known[dpid]
        return held[dpid] if isinstance(held, Desired) else held

    def __iter__(self) -> Iterator[int]:
        return iter(self.known)

    def __contains__(self, dpid: object) -> bool:
        return dpid in self.known  # without making the switch's set

    def __len__(self) -> int:
        return len(self.known)

    def count(self, dpid: int) -> int:
        """How many flows the switch holds (without making its set)."""
        held = self.known[dpid]
        return held.size(dpid) if isinstance(held, Desired) else len(held)

    def count_by_table(self, dpid: int) -> dict[int, int]:
        """Flows per table on the switch (without making its set)."""
        held = self.known[dpid]
        return (held.count_by_table(dpid) if isinstance(held, Desired)
                else count_by_table(held))

    def snapshot(self) -> Held:
        """A copy to read outside the lock (what each entry holds never changes)."""
        out = Held()
        out.known = dict(self.known)
        return out

    def changes(self, dpid: int, desired: Mapping[int, frozenset[Flow]]) -> FlowDiff:
        """What the switch needs to hold ``desired``: the compiler's own change when the
        switch holds the result it was rebuilt from, else a diff of the two sets."""
        held = self.known[dpid]
        if (isinstance(desired, Desired) and isinstance(held, Desired)
                and desired.parent == held.gen and dpid in desired.changes):
            return desired.changes[dpid]
        d = diff(desired[dpid], self[dpid])
        if not isinstance(desired, Desired):
            return d
        # what the datapath learned for a VM still migrating stays (the end of the move
        # removes it: ``forget``, which goes to every switch); any other learned flow goes
        keep = {(Owner.LEARNED, t) for t in desired.state.migrating()}
        delete = [f for f in d.delete if not keep or cookie_owner(f.cookie) not in keep]
        deleted = {g.key for g in delete}
        delete += [f for f in desired.forget if f.key not in deleted]
        return FlowDiff(d.add, tuple(delete), d.replaced)


class Switches:
    def __init__(self, metrics: Metrics, name: Callable[[int], str]) -> None:
        self.metrics = metrics
        self.name = name
        self.programmer: Programmer | None = None
        self.installed = Held()  # what each switch has, as we know
        self.ready: set[int] = set()  # connected and its links known: programmed fully
        self.ports: dict[int, dict[int, str]] = {}  # ports with link up, as reported
        self.flow_mods: Counter[int] = Counter()
        self.dirty: set[int] = set()  # a program failed: reprogram at the next change
        # a cluster member's lease check (member.py): may this process write to the switch
        self.fence: Callable[[int], bool] | None = None

    def may_write(self, dpid: int) -> bool:
        return self.fence is None or self.fence(dpid)

    def connected(self) -> list[int]:
        return sorted(self.installed)

    def attach(self, dpid: int, ports: dict[int, str], flows: Iterable[Flow]) -> None:
        """A switch (re)connected; its flows were read back. Not ready yet."""
        self.ports[dpid] = dict(ports)
        self.installed.known[dpid] = frozenset(flows)
        self.ready.discard(dpid)

    def detach(self, dpid: int) -> None:
        """Its flows stay on the switch (fail-secure); we just stop programming it."""
        self.ready.discard(dpid)
        self.installed.known.pop(dpid, None)

    def add_missing(self, dpid: int, desired: Mapping[int, frozenset[Flow]]) -> None:
        """Only the flows ``dpid`` lacks (a reconnect before its links are known). The
        other switches, for which ``desired`` changes nothing, hold it as they are."""
        if dpid in self.installed and self.may_write(dpid):
            have = self.installed[dpid]
            self.send(dpid, additions_only(diff(desired[dpid], have), have))
        if isinstance(desired, Desired):
            held = self.installed.known
            held.update((d, desired) for d, h in list(held.items()) if d != dpid
                        and isinstance(h, Desired) and desired.parent == h.gen
                        and not desired.changes.get(d, True))

    def report(self, desired: Mapping[int, frozenset[Flow]],
               before: Mapping[int, frozenset[Flow]]) -> dict[str, dict[str, int]]:
        """Per switch: how many flows ``desired`` has, and what programming the switches
        as they were ``before`` need (or needed) to get there."""
        out = {}
        for dpid in sorted(before):
            d = diff(desired.get(dpid, frozenset()), before[dpid])
            out[self.name(dpid)] = {
                "flows": len(desired.get(dpid, ())), "add": len(d.add), "delete": len(d.delete)}
        return out

    def program(self, desired: Mapping[int, frozenset[Flow]], first: Iterable[int] = (),
                last: Iterable[int] = ()) -> None:
        """Bring every ready switch to ``desired``: ``first`` (a migration target: local
        delivery and policy before anything points there), then all the others in one
        pipelined round trip, the old host (``last``) last among them. If one refuses,
        the switches already changed are put back."""
        mine = {d for d in self.ready if self.may_write(d)}
        head = [d for d in first if d in mine]
        tail = [d for d in last if d in mine and d not in head]
        rest = sorted(d for d in mine if d not in head and d not in tail) + tail
        held = self.installed
        done: list[tuple[int, frozenset[Flow] | Desired]] = []
        try:
            for phase in (head, rest):  # each phase is one pipelined round trip
                batch = [(d, held.changes(d, desired)) for d in phase
                         if d in held and d in desired]
                befores = {d: held.known[d] for d, _ in batch}
                try:
                    self._send_many([(d, c) for d, c in batch if c], desired)
                finally:
                    done += [(d, befores[d]) for d, c in batch
                             if c and held.known[d] is not befores[d]]
                    if isinstance(desired, Desired):  # unchanged ones hold it as well
                        held.known.update((d, desired) for d, c in batch if not c)
        except Exception as e:
            self.dirty |= self.ready
            for dpid, before in reversed(done):
                try:
                    flows = before[dpid] if isinstance(before, Desired) else before
                    self.send(dpid, diff(flows, held[dpid]))
                    held.known[dpid] = before
                except Exception:
                    LOG.exception("could not restore switch %016x", dpid)
            if isinstance(e, VfenceError):
                raise
            raise Refused(f"{e}; the change was rolled back") from e
        self.dirty.clear()

    def _send_many(self, batch: list[tuple[int, FlowDiff]],
                   desired: Mapping[int, frozenset[Flow]] | None = None) -> None:
        """Program several switches in one round trip where the programmer can; the
        switches that committed are accounted for even if another one failed."""
        if not batch or self.programmer is None:
            return
        for dpid, _ in batch:
            self._fenced(dpid)
        many = getattr(self.programmer, "program_many", None)
        if many is None or len(batch) == 1:
            for dpid, changes in batch:
                self.send(dpid, changes, desired)
            return
        failed: set[int] = set()
        error: Exception | None = None
        try:
            many(batch)
        except Exception as e:
            failed = set(getattr(e, "failed", [d for d, _ in batch]))
            error = e
        for dpid, changes in batch:
            if dpid not in failed:
                self._committed(dpid, changes, desired)
        if error is not None:
            raise error

    def send(self, dpid: int, changes: FlowDiff,
             desired: Mapping[int, frozenset[Flow]] | None = None) -> None:
        if not changes or self.programmer is None:
            return
        self._fenced(dpid)
        self.programmer.program(dpid, changes)
        self._committed(dpid, changes, desired)

    def _fenced(self, dpid: int) -> None:
        if not self.may_write(dpid):
            raise Refused(f"this member no longer masters switch {self.name(dpid)} (its "
                          "lease was not renewed in time); nothing was sent", "cluster")

    def _committed(self, dpid: int, changes: FlowDiff,
                   desired: Mapping[int, frozenset[Flow]] | None) -> None:
        """``desired``: the switch now holds exactly that result's flows (no copy made)."""
        self.flow_mods[dpid] += len(changes)
        self.installed.known[dpid] = desired if isinstance(desired, Desired) else apply_diff(
            self.installed[dpid], changes)
        name = self.name(dpid)
        self.metrics.flow_mods.labels(name).inc(len(changes))
        self.metrics.bundles.labels(name).inc()

    def read_flows(self, dpid: int, table: int | None = None, owner: Owner | None = None
                   ) -> list[tuple[Flow, int, int]]:
        """The switch's flows as it reports them now, with packet and byte counts (only
        ``table``'s, only ``owner``'s, when given)."""
        if self.programmer is None or dpid not in self.installed:
            raise NotFound(f"switch {dpid_str(dpid)} is not connected", "id")
        if table is None and owner is None:
            return self.programmer.read_flows(dpid)
        return self.programmer.read_flows(dpid, table, owner)
