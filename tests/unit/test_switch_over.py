"""Live migration switched over in the datapath: the first frame from a VM's standby
port makes every host send to the VM's new place before the controller hears of it
(learn()), and the controller's confirmation removes what was learned. Walked with
concrete frames through tests/unit/pipeline.py across three hosts; the lab checks the
same on real Open vSwitch with the controller stopped."""

from __future__ import annotations

from vfence.controller import compiler, desired, verify
from vfence.controller.flows import Flow, Owner, cookie, match
from vfence.controller.model import Binding, PortRef
from vfence.controller.pipeline import STANDBY_MARK

from .netfixtures import HV1, HV2, HV3, add_vm, leaf_spine
from .pipeline import Pipeline

BCAST = "ff:ff:ff:ff:ff:ff"
IP4, RARP = 0x0800, 0x8035
LABEL = {HV1: 1, HV2: 2, HV3: 3}


def _network():
    """m on hv1 port 3 migrating to hv2 port 9; s on hv2 port 4, r on hv3 port 3, q on
    hv1 port 4; everything allowed (the policy is not what this is about)."""
    st = leaf_spine(3, 2)
    vms = {n: add_vm(st, i, n, 1, dpid, port) for i, (n, dpid, port) in enumerate(
        [("m", HV1, 3), ("s", HV2, 4), ("r", HV3, 3), ("q", HV1, 4)], start=1)}
    st.standby["m"] = Binding("m", PortRef(HV2, 9), "m-new")
    return st, vms


def _ip(src, dst, in_port):
    return {"in_port": in_port, "eth_src": src.mac, "eth_dst": dst.mac, "eth_type": IP4,
            "ipv4_src": src.ips[0], "ipv4_dst": dst.ips[0], "ip_proto": 17, "udp_dst": 9}


def _arrive(frame):
    """A labelled frame as the host it is labelled for receives it from its spine."""
    keep = ("eth_src", "eth_dst", "eth_type", "ipv4_src", "ipv4_dst", "ip_proto", "udp_dst",
            "vlan_vid", "vlan_pcp")
    return {k: frame[k] for k in keep if k in frame} | {"in_port": 1}


def _labelled(out, label):
    return [f for port, f in out if port in (1, 2) and f["vlan_vid"] == 0x1000 | label]


def test_the_first_frame_from_the_standby_port_switches_every_host_over():
    st, vm = _network()
    flows = desired.compile_network(st)
    hv = {d: Pipeline(flows[d]) for d in (HV1, HV2, HV3)}
    # before: everyone sends to hv1, where m is bound
    (to_m,) = _labelled(hv[HV3].run(_ip(vm["r"], vm["m"], 3)), LABEL[HV1])
    assert to_m["vlan_pcp"] == 0  # not from a standby port: no mark
    assert _labelled(hv[HV2].run(_ip(vm["s"], vm["m"], 4)), LABEL[HV1])
    assert hv[HV1].ports(_ip(vm["q"], vm["m"], 4)) == [3]
    assert hv[HV1].ports(_arrive(to_m)) == [3]
    # m resumes on hv2 and announces itself (QEMU's RARP) from the standby port
    rarp = {"in_port": 9, "eth_src": vm["m"].mac, "eth_dst": BCAST, "eth_type": RARP}
    out = hv[HV2].run(rarp)
    assert 0xFFFFFFFD in [p for p, _ in out]  # the controller hears of it as well
    assert [f.cookie for f in hv[HV2].learned] == [cookie(Owner.LEARNED, vm["m"].id)]
    copies = {label: _labelled(out, label) for label in (LABEL[HV1], LABEL[HV3])}
    assert all(len(c) == 1 and c[0]["vlan_pcp"] == STANDBY_MARK for c in copies.values())
    for d in (HV1, HV3):  # each host the copy reaches learns, and still delivers it
        hv[d].run(_arrive(copies[LABEL[d]][0]))
        assert [f.cookie for f in hv[d].learned] == [cookie(Owner.LEARNED, vm["m"].id)]
    # after: every sender reaches m at its new port, through no controller
    assert hv[HV2].ports(_ip(vm["s"], vm["m"], 4)) == [9]
    for d, sender, port in ((HV3, "r", 3), (HV1, "q", 4)):
        (frame,) = _labelled(hv[d].run(_ip(vm[sender], vm["m"], port)), LABEL[HV2])
        assert hv[HV2].ports(_arrive(frame)) == [9], sender
    # a frame already in flight to hv1 goes on to hv2 (m's old port is gone)
    assert _labelled(hv[HV1].run(_arrive(to_m)), LABEL[HV2])


def test_only_the_standby_port_marks_a_frame():
    """m's frames from its old port, and anyone's frames, carry no mark: nothing is
    learned, and a VM cannot forge the mark (its frames must be untagged)."""
    st, vm = _network()
    flows = desired.compile_network(st)
    hv = {d: Pipeline(flows[d]) for d in (HV1, HV2, HV3)}
    rarp = {"in_port": 3, "eth_src": vm["m"].mac, "eth_dst": BCAST, "eth_type": RARP}
    out = hv[HV1].run(rarp)
    copies = _labelled(out, LABEL[HV2]) + _labelled(out, LABEL[HV3])
    assert len(copies) == 2 and {c["vlan_pcp"] for c in copies} == {0}
    for c in copies:
        hv[LABEL[HV2] and (HV2 if c["vlan_vid"] & 0xFFF == 2 else HV3)].run(_arrive(c))
    assert not any(p.learned for p in hv.values())
    tagged = dict(rarp, in_port=4, eth_src=vm["q"].mac, vlan_vid=0x1000 | 2, vlan_pcp=4)
    assert hv[HV1].run(tagged) == [] and not hv[HV1].learned  # tagged: a spoof, dropped
    # positive control: the standby port's frame does get learned on hv2
    hv[HV2].run(dict(rarp, in_port=9))
    assert hv[HV2].learned


def test_the_confirmation_removes_what_was_learned_and_nothing_else():
    st, vm = _network()
    before = desired.build(st)
    after_state = st.copy()
    after_state.bindings["m"] = after_state.standby.pop("m")
    after = desired.rebuild(before, after_state)
    gone = compiler.learned_flow(vm["m"])
    for d in (HV1, HV2, HV3):
        change = after.changes[d]
        assert gone in change.delete, d
        assert not any(f.instructions and any(a[0] == "learn" for i in f.instructions
                       if i[0] == "apply" for a in i[1]) for f in after[d]), d
    # a compile with nothing migrating deletes nothing learned
    again = desired.rebuild(after, after_state.copy())
    assert all(gone not in c.delete for c in again.changes.values())


def test_verify_counts_what_learn_may_install():
    """A switch-over that would deliver to an isolated VM is a hole before it happens."""
    st, vm = _network()
    flows = {d: list(f) for d, f in desired.compile_network(st).items()}
    ports = {HV1: {1, 2, 3, 4}, HV2: {1, 2, 4, 9}, HV3: {1, 2, 3}}
    assert verify.learnable(flows[HV2]) and verify.learnable(flows[HV1])
    # every learnable flow names the port it would send to
    (at_hv2,) = verify.learnable(flows[HV2])
    assert at_hv2.instructions[1] == ("apply", (("output", 9),))
    (at_hv1,) = verify.learnable(flows[HV1])
    assert at_hv1.instructions[1][1][:2] == (("set", "in_port", 0),
                                             ("set", "vlan_tci", 0x1000 | LABEL[HV2]))
    assert ports  # (the walk itself is covered by test_verify with isolation pairs)


def test_a_reconnecting_switch_keeps_what_it_learned_only_for_vms_still_migrating():
    from vfence.controller.metrics import Metrics
    from vfence.controller.switches import Switches

    st, vm = _network()
    result = desired.build(st)
    mine = compiler.learned_flow(vm["m"])
    stale = compiler.learned_flow(vm["s"])  # a move that ended while we were away
    switches = Switches(Metrics(), hex)
    switches.attach(HV1, {}, [*result[HV1], mine, stale])
    change = switches.installed.changes(HV1, result)
    assert change.delete == (stale,) and not change.add
    # the move ends while this switch still holds a set read back (not the parent
    # result): the fallback diff deletes what it learned all the same
    done = st.copy()
    done.bindings["m"] = done.standby.pop("m")
    after = desired.rebuild(result, done)
    change = switches.installed.changes(HV1, after)
    assert mine in change.delete and stale in change.delete


def test_a_broadcast_on_the_old_host_keeps_its_way_after_the_switch_over():
    """The learned flow is for unicast to the VM's MAC: a flood's copy for the VM's old
    port (reg4 set per receiver) is not turned round, tagged or sent twice."""
    st, vm = _network()
    flows = desired.compile_network(st)
    hv = {d: Pipeline(flows[d]) for d in (HV1, HV2, HV3)}
    rarp = {"in_port": 9, "eth_src": vm["m"].mac, "eth_dst": BCAST, "eth_type": RARP}
    copy_for_hv1 = _labelled(hv[HV2].run(rarp), LABEL[HV1])[0]
    hv[HV1].run(_arrive(copy_for_hv1))
    assert hv[HV1].learned  # hv1 switched over
    bcast = {"in_port": 4, "eth_src": vm["q"].mac, "eth_dst": BCAST, "eth_type": RARP}
    out = hv[HV1].run(bcast)
    local = [(p, f["vlan_vid"]) for p, f in out if p not in (1, 2)]
    assert local == [(3, 0)], out  # m's old port once, untagged; never back to q
    far = sorted(f["vlan_vid"] & 0xFFF for p, f in out if p in (1, 2))
    assert far == [LABEL[HV2], LABEL[HV3]], out  # one copy per other host
    # positive control: unicast from q to m does follow the switch-over
    assert _labelled(hv[HV1].run(_ip(vm["q"], vm["m"], 4)), LABEL[HV2])


def test_verify_calls_a_switch_with_a_learn_it_cannot_read_unknown():
    """A hand-made learn() of a form the codec does not model could install anything."""
    from .test_verify import finance_state, ports

    st = finance_state()
    flows = {d: list(f) for d, f in desired.compile_network(st).items()}
    odd = Flow(0, 65000, match(in_port=7), (("apply", (("unknown", "NXActionLearn"),)),), 5)
    (v,) = verify.verify(st, {**flows, HV1: [*flows[HV1], odd]}, ports(st))
    assert v.status == "unknown" and "NXActionLearn" in v.reason, (v.status, v.reason)
    (v,) = verify.verify(st, flows, ports(st))
    assert v.isolated  # control: without it, proved
