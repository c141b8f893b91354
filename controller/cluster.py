"""Which member of a controller cluster should master each switch (pure).

Every member runs the same plan over the same inputs (the live members and who holds
each switch's lease now, read from the shared database) and claims only the switches the
plan gives it; the database's lease (``leases.py``) decides who really holds one, and
its term becomes the OpenFlow role request's generation id, so a switch itself refuses a
stale master. The plan only has to be good, not agreed: two members that briefly
disagree contend for a lease, and one wins.

A good plan: every switch has a live master; each member masters ``floor(S / M)`` or one
more (S switches, M live members); a switch keeps its live master unless that member has
more than its share, so a member joining takes switches from the busiest members only,
and a member leaving hands on only its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping


def plan(switches: Iterable[str], members: Iterable[str], holders: Mapping[str, str],
         reach: Mapping[str, Collection[str]] | None = None) -> dict[str, str]:
    """Switch -> the member that should master it. ``holders``: switch -> its lease's
    holder now (live or not); a switch not in it has none. ``reach``: the switches each
    member reaches (a member not in it reaches all): a switch goes only to a member that
    reaches it, over its share if need be, and to none if no live member does.
    Deterministic: the same inputs give the same plan on every member."""
    live = sorted(set(members))
    if not live:
        return {}

    def ok(m: str, s: str) -> bool:
        return reach is None or m not in reach or s in reach[m]

    todo = sorted(set(switches))
    held = {m: sorted(s for s in todo if holders.get(s) == m and ok(m, s)) for m in live}
    # S = q*M + r: r members master q+1 switches, the rest q; the extra one goes to those
    # holding most now (then by name), so as few switches as possible change masters
    q, r = divmod(len(todo), len(live))
    ranked = sorted(live, key=lambda m: (-len(held[m]), m))
    quota = {m: q + (i < r) for i, m in enumerate(ranked)}
    out = {s: m for m in live for s in held[m][:quota[m]]}
    load = {m: min(len(held[m]), quota[m]) for m in live}
    able = {s: [m for m in live if ok(m, s)] for s in todo if s not in out}
    for s in sorted(able, key=lambda s: (len(able[s]), s)):  # the most bound first
        if not able[s]:
            continue  # no live member reaches it
        under = [m for m in able[s] if load[m] < quota[m]]
        m = min(under or able[s], key=lambda m: (load[m], m))
        out[s] = m
        load[m] += 1
    return out


def moves(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Switch -> (old master, new master) for each switch whose master changes."""
    return {s: (before[s], m) for s, m in after.items() if s in before and before[s] != m}
