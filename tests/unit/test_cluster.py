"""The cluster's mastership plan (pure): every switch a live master, an even share each,
and as few masters changed as possible when members come and go."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from vfence.controller import cluster

SIX = [f"hv{i}" for i in range(1, 7)]


def test_three_members_and_six_switches_master_two_each():
    p = cluster.plan(SIX, ["c1", "c2", "c3"], {})
    assert Counter(p.values()) == {"c1": 2, "c2": 2, "c3": 2}
    assert cluster.plan(SIX, ["c3", "c1", "c2"], {}) == p  # the same on every member


def test_a_fourth_member_takes_its_share_from_the_busiest_only():
    before = cluster.plan(SIX, ["c1", "c2", "c3"], {})
    after = cluster.plan(SIX, ["c1", "c2", "c3", "c4"], before)
    assert sorted(Counter(after.values()).values()) == [1, 1, 2, 2]
    moved = cluster.moves(before, after)
    assert [new for _, new in moved.values()] == ["c4"]  # one switch, to the newcomer
    eight = [f"hv{i}" for i in range(1, 9)]
    before = cluster.plan(eight, ["c1", "c2", "c3"], {})
    after = cluster.plan(eight, ["c1", "c2", "c3", "c4"], before)
    assert Counter(after.values()) == dict.fromkeys(["c1", "c2", "c3", "c4"], 2)
    assert {new for _, new in cluster.moves(before, after).values()} == {"c4"}


def test_a_dead_members_switches_go_to_the_live_ones_and_nothing_else_moves():
    before = cluster.plan(SIX, ["c1", "c2", "c3"], {})
    after = cluster.plan(SIX, ["c1", "c3"], before)
    assert set(after.values()) == {"c1", "c3"}
    assert Counter(after.values()) == {"c1": 3, "c3": 3}
    assert all(after[s] == m for s, m in before.items() if m != "c2")
    assert cluster.plan(SIX, [], before) == {}


@given(st.sets(st.sampled_from([f"s{i}" for i in range(12)])),
       st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1),
       st.dictionaries(st.sampled_from([f"s{i}" for i in range(12)]),
                       st.sampled_from(["a", "b", "c", "d", "e", "gone"])))
def test_any_plan_covers_every_switch_evenly_and_keeps_what_it_can(switches, members, holders):
    p = cluster.plan(switches, members, holders)
    assert set(p) == switches and set(p.values()) <= members
    q = len(switches) // len(members)
    load = Counter(p.values())
    assert all(q <= load[m] <= q + 1 for m in members), load
    losers = {holders[s] for s in switches if holders.get(s) in members and p[s] != holders[s]}
    gainers = {p[s] for s in switches if holders.get(s) != p[s]}
    assert not losers & gainers, (holders, p)  # no switch moves for nothing


def test_a_switch_goes_only_to_a_member_that_reaches_it():
    """(Found by review: a member that lost its connection to one switch was still
    planned as its master, so nobody claimed it.) c1 reaches all but hv1."""
    switches = ["hv1", "hv2", "hv3", "hv4"]
    reach = {"c1": {"hv2", "hv3", "hv4"}, "c2": set(switches)}
    p = cluster.plan(switches, ["c1", "c2"], {"hv1": "c1", "hv2": "c1"}, reach)
    assert p["hv1"] == "c2" and sorted(p.values()).count("c1") == 2
    only = cluster.plan(switches, ["c1", "c2"], {}, {"c1": {"hv1"}, "c2": {"hv1"}})
    assert set(only) == {"hv1"}  # the others: no live member reaches them
    over = cluster.plan(switches, ["c1", "c2"], {}, {"c1": set(switches), "c2": {"hv1"}})
    assert list(over.values()).count("c1") == 3  # over its share: nobody else can
