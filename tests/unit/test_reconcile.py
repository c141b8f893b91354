from vfence.controller.flows import Flow, match
from vfence.controller.reconcile import FlowDiff, additions_only, apply_diff, diff

A = Flow(0, 10, match(in_port=1), (("goto", 10),), 1)
A2 = Flow(0, 10, match(in_port=1), (("goto", 40),), 1)
B = Flow(0, 10, match(in_port=2), (), 1)
C = Flow(40, 0, (), (), 2)


def test_noop_diff_is_empty():
    d = diff({A, B, C}, [C, B, A])
    assert not d and len(d) == 0 and d == FlowDiff()


def test_add_change_delete():
    d = diff({A2, C}, {A, B})
    assert d.add == (A2, C)  # changed flow is re-added (replaces by key)
    assert d.delete == (B,)
    assert apply_diff({A, B}, d) == frozenset({A2, C})


def test_cookie_change_is_a_change():
    d = diff({Flow(0, 10, match(in_port=1), (("goto", 10),), 99)}, {A})
    assert len(d.add) == 1 and not d.delete


def test_foreign_flows_are_removed():
    foreign = Flow(0, 500, match(in_port=9), (("apply", (("output", 1),)),), 0)
    assert diff({A}, {A, foreign}).delete == (foreign,)


def test_additions_only_never_touches_existing_flows():
    d = diff({A2, C}, {A, B})
    only = additions_only(d, {A, B})
    assert only.add == (C,) and only.delete == ()
