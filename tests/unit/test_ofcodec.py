"""The cached wire bytes (ofcodec.add_body, delete_body, bundle) are exactly what os-ken
serialises for the same flows, and the app still pins a switch's errors on the bundle."""

from __future__ import annotations

import itertools
import struct
import threading
from types import SimpleNamespace

import pytest
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from vfence.apps import ofcodec
from vfence.apps.vfence_app import SwitchError, VfenceApp
from vfence.controller.desired import compile_network
from vfence.controller.flows import OFPP_CONTROLLER, Flow, Owner, Table, cookie, match
from vfence.controller.reconcile import FlowDiff

from .netfixtures import FINANCE_ON_3, finance, leaf_spine

FLAGS = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED


class FakeDatapath:
    """Enough of os-ken's Datapath to serialise messages and record what is written."""

    ofproto = ofp
    ofproto_parser = parser

    def __init__(self, dpid: int = 1, xid: int = 100) -> None:
        self.id, self.xid = dpid, xid
        self.written: list[bytes] = []
        self.on_barrier = lambda msg: None

    def set_xid(self, msg):
        self.xid = (self.xid + 1) & ofp.MAX_XID
        msg.set_xid(self.xid)

    def send(self, buf: bytes) -> bool:
        self.written.append(buf)
        return True

    def send_msg(self, msg) -> None:
        msg.serialize()
        self.send(bytes(msg.buf))
        self.on_barrier(msg)


def _wire(msg, xid: int) -> bytes:
    """The old path: an os-ken message object, serialised."""
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


@pytest.fixture(scope="module")
def flows() -> list[Flow]:
    """Every flow of the finance network on three hosts and two spines, api-1 migrating
    to hv3 (and one flow that punts to the controller with an empty match)."""
    from vfence.controller.model import Binding, PortRef

    st = finance(leaf_spine(3, 2), FINANCE_ON_3)
    st.standby["api-1"] = Binding("api-1", PortRef(0x103, 7))
    out = compile_network(st)
    punt = Flow(Table.CLASSIFY, 1, (), (("apply", (("output", OFPP_CONTROLLER),)),),
                cookie(Owner.BASE))
    return sorted({f for fl in out.values() for f in fl} | {punt})


def test_the_flows_cover_every_kind_of_match_instruction_and_action(flows):
    masked = {k for f in flows for k, v in f.match if isinstance(v, tuple)}
    assert {"metadata", "reg0", "ct_state", "eth_dst"} <= masked
    ins = {i[0] for f in flows for i in f.instructions}
    assert ins == {"meter", "apply", "meta", "goto"}
    acts = {a[0] for f in flows for i in f.instructions if i[0] == "apply" for a in i[1]}
    assert acts == {"output", "push_vlan", "pop_vlan", "set", "move", "resubmit", "ct",
                    "learn"}


def test_flow_mod_bytes_are_what_os_ken_serialises(flows):
    dp = FakeDatapath()
    for xid, f in enumerate(flows, 1):
        assert ofcodec.flow_mod(ofcodec.add_body(f), xid) == _wire(ofcodec.flow_add(dp, f), xid)
        assert ofcodec.flow_mod(ofcodec.delete_body(f), xid) == _wire(
            ofcodec.flow_delete(dp, f), xid)


@pytest.mark.parametrize("network", ["finance-plus", "finance-plus-open", "bench-scale", "routed"])
def test_every_compiled_flow_of_richer_networks_is_what_os_ken_serialises(network):
    """IPv6 addresses and prefixes, every kind of rule endpoint, protocol and action,
    conjunctions, a migration under way: the bytes vfence writes itself (MAC and IP
    addresses, set-field and apply-actions without os-ken objects) equal OFPFlowMod's."""
    from .test_pipeline_declared import NETWORKS

    dp = FakeDatapath()
    flows = {f for fl in compile_network(NETWORKS[network]()).values() for f in fl}
    assert any(k.startswith("ipv6") for f in flows for k, _ in f.match)
    for f in sorted(flows):
        assert ofcodec.flow_mod(ofcodec.add_body(f), 1) == _wire(ofcodec.flow_add(dp, f), 1), f


def test_each_flow_is_encoded_once(flows):
    f = flows[0]
    again = Flow(f.table, f.priority, f.match, f.instructions, f.cookie)
    assert ofcodec.add_body(again) is ofcodec.add_body(f)


def _os_ken_bundle(dp, mods, bid: int, xid: int) -> bytes:
    msgs = [parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_OPEN_REQUEST, FLAGS, [])]
    msgs += [parser.ONFBundleAddMsg(dp, bid, FLAGS, m, []) for m in mods]
    msgs.append(parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_COMMIT_REQUEST, FLAGS, []))
    return b"".join(_wire(m, x) for x, m in enumerate(msgs, xid))


@pytest.mark.parametrize("chunk", [ofcodec.CHUNK, 1000])
def test_bundle_bytes_are_what_os_ken_serialises(flows, monkeypatch, chunk):
    monkeypatch.setattr(ofcodec, "CHUNK", chunk)
    dp, some = FakeDatapath(), flows[:40]
    bodies = [ofcodec.add_body(f) for f in some] + [ofcodec.delete_body(some[0])]
    mods = [ofcodec.flow_add(dp, f) for f in some] + [ofcodec.flow_delete(dp, some[0])]
    chunks = list(ofcodec.bundle(bodies, 7, FLAGS, 0xFFFF_0000))
    assert b"".join(chunks) == _os_ken_bundle(dp, mods, 7, 0xFFFF_0000)
    assert (len(chunks) > 1) == (chunk == 1000)
    for c in chunks:  # whole messages only: each chunk parses to its end
        at = 0
        while at < len(c):
            at += int.from_bytes(c[at + 2:at + 4], "big")
        assert at == len(c)


def test_empty_bundle_is_open_and_commit():
    dp = FakeDatapath()
    assert b"".join(ofcodec.bundle([], 3, FLAGS, 9)) == _os_ken_bundle(dp, [], 3, 9)


# --- conjunctive matches: ("conjunction", id, k, n) actions and the conj_id match ---------

_RULE = cookie(Owner.RULE, 3)
CONJUNCTIVE = [
    Flow(Table.POLICY, 500, match(reg0=(4, 4)),
         (("apply", (("conjunction", 7, 1, 2),)),), _RULE),
    # several ids on one clause flow, deliberately not in (id, k) order: OVS keeps them as sent
    Flow(Table.POLICY, 500, match(metadata=(5, 0xFFF), reg2=(1, 1)),
         (("apply", (("conjunction", 9, 3, 3), ("conjunction", 7, 2, 2))),), _RULE),
    Flow(Table.POLICY, 500, match(conj_id=7, metadata=(5, 0xFFF), reg0=(4, 4)),
         (("goto", int(Table.FORWARD)),), _RULE),
]
_IDS = ["one-conjunction", "two-conjunctions", "conj_id"]


def test_conjunction_is_ovs_nx_action_conjunction_with_a_0_based_clause():
    """struct nx_action_conjunction (OVS lib/ofp-actions.c): experimenter action, len 16,
    NX vendor 0x2320, subtype 34, then clause (0-based: OVS refuses clause >= n_clauses),
    n_clauses, id."""
    ins = (("apply", (("conjunction", 7, 1, 2), ("conjunction", 0x01020304, 3, 3))),)
    head = bytes.fromhex("0004 0028 00000000")  # OFPIT_APPLY_ACTIONS, length 8 + 2 * 16
    first = bytes.fromhex("ffff 0010 00002320 0022 00 02 00000007")
    second = bytes.fromhex("ffff 0010 00002320 0022 02 03 01020304")
    assert ofcodec.instruction_bytes(ins) == head + first + second


@pytest.mark.parametrize("bad", [("conjunction", 7, 0, 2), ("conjunction", 7, 3, 2),
                                 ("conjunction", 7, 1, 1), ("conjunction", 7, 1, 65)])
def test_a_conjunction_ovs_would_refuse_is_not_encoded(bad):
    with pytest.raises(ValueError, match="bad conjunction"):
        ofcodec.to_action(bad)


@pytest.mark.parametrize("f", CONJUNCTIVE, ids=_IDS)
def test_conjunctive_flow_mod_bytes_are_what_os_ken_serialises(f):
    dp = FakeDatapath()
    assert ofcodec.flow_mod(ofcodec.add_body(f), 5) == _wire(ofcodec.flow_add(dp, f), 5)
    assert ofcodec.flow_mod(ofcodec.delete_body(f), 6) == _wire(ofcodec.flow_delete(dp, f), 6)


def _read_back(f: Flow, mod_msg=None) -> Flow:
    """``f`` as a switch reports it: os-ken's flow-mod for it (or ``mod_msg``, a flow-mod
    with the same table, priority and cookie), its match and instructions put in an
    ofp_flow_stats entry, parsed by os-ken and translated by from_stats."""
    mod = _wire(mod_msg or ofcodec.flow_add(FakeDatapath(), f), 1)
    rest = mod[ofp.OFP_FLOW_MOD_SIZE - ofp.OFP_MATCH_SIZE:]  # ofp_match, instructions
    size = ofp.OFP_FLOW_STATS_0_SIZE + len(rest)
    head = struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, size, f.table, 1, 0, f.priority,
                       0, 0, 0, f.cookie, 0, 0)
    return ofcodec.from_stats(parser.OFPFlowStats.parser(head + rest, 0))


@pytest.mark.parametrize("f", CONJUNCTIVE, ids=_IDS)
def test_conjunctive_flow_reads_back_equal(f):
    assert _read_back(f) == f


# --- learn (NXAST_LEARN), moves through vlan_pcp, set/load of vlan_tci ------------------

_HOST = cookie(Owner.FABRIC, 7)  # the top bit set: a full 64-bit cookie
_LEARN_VLAN = ("learn", 40, 110, _HOST, (("reg4", 7),), (("vlan_tci", 0x1063),), "reg11")
_LEARN_IN_PORT = ("learn", 40, 110, _HOST, (("reg4", 7),), (), "in_port")
LEARNING = [
    Flow(Table.POLICY, 100, match(reg4=7), (("apply", (_LEARN_VLAN,)),), _HOST),
    Flow(Table.POLICY, 101, match(reg4=7), (("apply", (_LEARN_IN_PORT, _LEARN_VLAN)),
                                            ("goto", int(Table.FORWARD))), _HOST),
    # what the learn installs: load the whole TCI (pushes a tag on an untagged packet)
    Flow(40, 110, match(reg4=7), (("apply", (("set", "vlan_tci", 0x1063), ("output", 3))),),
         _HOST),
    Flow(Table.FORWARD, 90, match(reg4=7), (("apply", (
        ("push_vlan", 0x8100), ("move", "reg10", "vlan_pcp", 3),
        ("move", "vlan_pcp", "reg10", 3))),), _HOST),
]
_LEARNING_IDS = ["learn-load-output-reg", "learn-output-in_port", "set-vlan_tci", "move-pcp"]


@pytest.mark.parametrize("f", LEARNING, ids=_LEARNING_IDS)
def test_learning_flow_mod_bytes_are_what_os_ken_serialises(f):
    dp = FakeDatapath()
    assert ofcodec.flow_mod(ofcodec.add_body(f), 5) == _wire(ofcodec.flow_add(dp, f), 5)
    assert ofcodec.flow_mod(ofcodec.delete_body(f), 6) == _wire(ofcodec.flow_delete(dp, f), 6)


@pytest.mark.parametrize("f", LEARNING, ids=_LEARNING_IDS)
def test_learning_flow_reads_back_equal(f):
    assert _read_back(f) == f


def test_learn_is_ovs_nx_action_learn_with_nxm_fields():
    """struct nx_action_learn (OVS lib/learn.c), as ``ovs-ofctl`` writes
    learn(table=40,priority=110,cookie=C,NXM_NX_REG4[]=0x7,output:NXM_OF_IN_PORT[]):
    no timeouts or flags, a 32-bit immediate match on NXM_NX_REG4, then output of the
    16-bit NXM_OF_IN_PORT (not the 32-bit OXM in_port); padded to 8 bytes."""
    ins = (("apply", (_LEARN_IN_PORT,)),)
    learn = (bytes.fromhex("ffff 0038 00002320 0010 0000 0000 006e")
             + _HOST.to_bytes(8, "big") + bytes.fromhex("0000 28 00 0000 0000")
             + bytes.fromhex("2020 00000007 00010804 0000")  # reg4[] = 7 (immediate, match)
             + bytes.fromhex("1010 00000002 0000")  # output:NXM_OF_IN_PORT[] (16 bits), pad to 56
             + bytes(4))
    assert ofcodec.instruction_bytes(ins) == bytes.fromhex("0004 0040 00000000") + learn


def test_a_learned_load_reads_back_as_the_set_it_does():
    """OVS reports a learned flow's ``load:0x1063->NXM_OF_VLAN_TCI[]`` as NXAST_REG_LOAD
    (OpenFlow 1.3 dump-flows too), and the flow written with set_field as set_field:
    both are ("set", "vlan_tci", 0x1063)."""
    f = LEARNING[2]
    load = parser.NXActionRegLoad(ofs_nbits=nicira_ext.ofs_nbits(0, 15), dst="vlan_tci",
                                  value=0x1063)
    load2 = parser.NXActionRegLoad2(dst="vlan_tci", value=0x1063)
    for a in (load, load2):
        acts = [a, parser.OFPActionOutput(3, 0)]
        mod = parser.OFPFlowMod(
            FakeDatapath(), cookie=f.cookie, table_id=f.table, priority=f.priority,
            match=ofcodec.to_match(f.match),
            instructions=[parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, acts)])
        assert _read_back(f, mod) == f


def test_a_load_of_part_of_a_field_is_no_set():
    part = parser.NXActionRegLoad(ofs_nbits=nicira_ext.ofs_nbits(0, 11), dst="vlan_tci",
                                  value=0x063)
    assert ofcodec.from_action(part)[0] == "unknown"


@pytest.mark.parametrize("change", [{"idle_timeout": 10}, {"flags": 1}, {"extra": "in_port"},
                                    {"partial": True}])
def test_a_learn_of_another_shape_reads_back_as_unknown(change):
    """Timeouts, flags, two outputs or a match on part of a field are nothing we write, so
    such a learn equals no desired action (the reconciler replaces the flow)."""
    learn = ofcodec.to_action(_LEARN_VLAN)
    if "extra" in change:
        learn.specs.append(parser.NXFlowSpecOutput(src=("in_port_nxm", 0), n_bits=16))
    elif "partial" in change:
        learn.specs[0] = parser.NXFlowSpecMatch(src=7, dst=("reg4", 0), n_bits=8)
    else:
        for k, v in change.items():
            setattr(learn, k, v)
    buf = bytearray()
    learn.serialize(buf, 0)
    assert ofcodec.from_action(parser.OFPAction.parser(bytes(buf), 0))[0] == "unknown"


@pytest.mark.parametrize("bad", [
    ("learn", 40, 110, 0, (("reg4", 1 << 32),), (), "in_port"),
    ("learn", 40, 110, 0, (), (("vlan_tci", 0x10000),), "in_port"),
    ("learn", 40, 110, 0, (("reg4", -1),), (), "in_port"),
])
def test_a_learn_constant_wider_than_its_field_is_not_encoded(bad):
    with pytest.raises(ValueError, match="does not fit"):
        ofcodec.to_action(bad)


# --- the app: xids and errors --------------------------------------------------------------


def _app(dp: FakeDatapath) -> VfenceApp:
    """A VfenceApp with only the request/reply bookkeeping (no os-ken manager)."""
    app = VfenceApp.__new__(VfenceApp)
    app.datapaths = {dp.id: dp}
    app.pending, app.pending_lock = {}, threading.Lock()
    app.bundle_ids = itertools.count(1)
    return app


def _switch_answers(app: VfenceApp, dp: FakeDatapath, error_xid: int | None):
    """After the barrier is written: maybe an error about ``error_xid``, then the reply."""
    def answer(msg) -> None:
        if error_xid is not None:
            app._error(SimpleNamespace(msg=SimpleNamespace(
                datapath=dp, xid=error_xid, type=ofp.OFPET_BAD_MATCH, code=3)))
        app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=msg.xid)))
    dp.on_barrier = answer


def _diff(flows, n: int) -> FlowDiff:
    return FlowDiff(add=tuple(flows[:n]))


def test_a_refused_bundle_raises_with_the_error_and_leaves_nothing_pending(flows):
    dp = FakeDatapath(xid=500)
    app = _app(dp)
    _switch_answers(app, dp, error_xid=501 + 5)  # the fifth flow's bundle-add
    with pytest.raises(SwitchError, match="refused the bundle: type=4 code=3"):
        app.program(dp.id, _diff(flows, 10))
    assert app.pending == {}
    assert dp.xid == 500 + 12 + 1  # open, 10 adds, commit, then the barrier


def test_an_error_outside_the_bundle_is_not_its_own(flows):
    dp = FakeDatapath(xid=500)
    app = _app(dp)
    _switch_answers(app, dp, error_xid=500)  # an older request's xid
    app.program(dp.id, _diff(flows, 10))
    assert app.pending == {}


def test_one_flow_mod_goes_alone_and_its_error_counts(flows):
    dp = FakeDatapath(xid=ofp.MAX_XID)  # the next xid wraps round to 1
    app = _app(dp)
    _switch_answers(app, dp, error_xid=1)
    with pytest.raises(SwitchError, match="type=4 code=3"):
        app.program(dp.id, _diff(flows, 1))
    assert dp.written[0] == ofcodec.flow_mod(ofcodec.add_body(flows[0]), 1)


def test_xids_of_a_bundle_restart_at_one_rather_than_wrap(flows):
    dp = FakeDatapath(xid=ofp.MAX_XID - 3)
    app = _app(dp)
    _switch_answers(app, dp, error_xid=None)
    app.program(dp.id, _diff(flows, 10))
    assert int.from_bytes(dp.written[0][4:8], "big") == 1  # the open request
    assert dp.xid == 13
