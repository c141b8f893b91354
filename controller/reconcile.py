"""The reconciler: minimal flow changes that turn what a switch has into what it should have.

Pure functions over sets of :class:`~controller.flows.Flow`. The switch's flows are read
back on connect (flow stats) and tracked afterwards, so a restart with nothing changed
produces an empty diff, and so zero flow-mods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .flows import Flow


@dataclass(frozen=True)
class FlowDiff:
    """``add`` holds new and changed flows (an OpenFlow ADD replaces a flow with the same
    table/priority/match); ``delete`` holds flows whose key is no longer wanted."""

    add: tuple[Flow, ...] = field(default_factory=tuple)
    delete: tuple[Flow, ...] = field(default_factory=tuple)
    # flows the adds replace (same key), when the maker of the diff knows them: then
    # applying the diff needs no key index of the whole switch (None: not known)
    replaced: tuple[Flow, ...] | None = field(default=None, compare=False)

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.delete)


def diff(desired: Iterable[Flow], actual: Iterable[Flow]) -> FlowDiff:
    """Flows to add or replace, and flows to delete, sorted for deterministic output.

    Every flow on the switch that is not desired goes, including ones vfence did not
    write: the bridge fails closed and nobody else programs it.
    """
    # set arithmetic on the flows (their hashes are cached) first; keys only for what
    # differs, which is little after a small change
    want = desired if isinstance(desired, frozenset | set) else frozenset(desired)
    have = actual if isinstance(actual, frozenset | set) else frozenset(actual)
    return split_changes(want - have, have - want)


def split_changes(add: set[Flow] | frozenset[Flow], gone: set[Flow] | frozenset[Flow]
                  ) -> FlowDiff:
    """Flows that appear and flows that go as a diff: a flow that goes is replaced when
    one that appears has its key (an ADD overwrites it), else deleted."""
    add_keys = {f.key for f in add}
    delete = [f for f in gone if f.key not in add_keys]
    replaced = [f for f in gone if f.key in add_keys]
    return FlowDiff(tuple(sorted(add, key=_order)), tuple(sorted(delete, key=_order)),
                    tuple(replaced))


def _order(f: Flow) -> tuple[int, int, str, int]:
    """A deterministic order that never prints a flow's actions (a flood's are long)."""
    return (f.table, f.priority, repr(f.match), f.cookie)


def additions_only(d: FlowDiff, actual: Iterable[Flow]) -> FlowDiff:
    """The part of a diff that only adds flows whose key the switch lacks.

    Used while a switch has just connected and links are still being discovered:
    it gets the skeleton it needs (LLDP punt, drops) without anything it has being
    replaced or removed on incomplete knowledge.
    """
    have = {f.key for f in actual}
    return FlowDiff(tuple(f for f in d.add if f.key not in have), (), ())


def apply_diff(actual: Iterable[Flow], d: FlowDiff) -> frozenset[Flow]:
    """What the switch holds once ``d`` is committed."""
    if d.replaced is not None:
        return (frozenset(actual) - frozenset(d.delete) - frozenset(d.replaced)) | frozenset(
            d.add)
    by_key = {f.key: f for f in actual}
    for f in d.delete:
        by_key.pop(f.key, None)
    for f in d.add:
        by_key[f.key] = f
    return frozenset(by_key.values())
