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


def test_a_switch_is_told_each_flow_once():
    """The diff works on whole flows and looks at keys only for what differs: that is
    right only if no two desired flows share a key (one would replace the other)."""
    from vfence.controller import desired

    from .netfixtures import FINANCE, FINANCE_ON_3, finance, leaf_spine

    st = finance(leaf_spine(3, 2), FINANCE_ON_3, FINANCE)
    for dpid, flows in desired.compile_network(st).items():
        assert len({f.key for f in flows}) == len(flows), f"switch {dpid:x}: keys repeat"


def test_diff_and_apply_agree_with_replacing_by_key():
    a = Flow(0, 10, match(in_port=1), (("goto", 10),), 1)
    b = Flow(0, 10, match(in_port=1), (("goto", 15),), 1)  # same key, new instructions
    c = Flow(0, 20, match(in_port=2), (), 1)
    d = diff({b}, {a, c})
    assert d.add == (b,) and d.delete == (c,) and d.replaced == (a,)
    assert apply_diff({a, c}, d) == frozenset({b})
    # a diff made by hand (no replaced list) still replaces by key
    assert apply_diff({a, c}, FlowDiff((b,), (c,))) == frozenset({b})
