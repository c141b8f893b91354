"""Translation between plain :class:`controller.flows.Flow` and os-ken OpenFlow 1.3 messages.

Both directions live here so that a flow written and read back compares equal: the
basis of "a controller restart with nothing changed sends zero flow-mods".

Programming a switch writes wire bytes (:func:`add_body`, :func:`delete_body`,
:func:`bundle`): an os-ken message object per flow made installing 10,000 flows 16x
slower than ``ovs-ofctl``. The bytes come from os-ken's own encoders, one match field and
one instruction list at a time, and are cached with each flow's whole flow-mod: fields,
instructions and flows recur across VMs, switches and compiles. :func:`flow_add` and
:func:`flow_delete` remain the reference (tests compare the bytes with theirs).
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from os_ken.lib import type_desc
from os_ken.ofproto import ofproto_common, oxm_fields
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from vfence.controller.flows import OFPP_CONTROLLER, Flow, Match

NX_IN_PORT = 0xFFF8  # Nicira actions use 16-bit port numbers: "keep the packet's in_port"
# fields narrower than the bytes os-ken stores them in (a learn spec says how many bits)
_FIELD_BITS = {"vlan_vid": 13, "vlan_pcp": 3, "ip_dscp": 6, "ip_ecn": 2, "mpls_tc": 3,
               "mpls_label": 20, "mpls_bos": 1, "ipv6_flabel": 20}
_INSTRUCTION_ORDER = {"meter": 0, "apply": 1, "meta": 2, "goto": 3}


class _EricssonOxm(oxm_fields._OxmClass):
    """OVS's ERICOXM_OF_ class (0x1000): neighbour discovery's reserved word (the NA
    flags) and its first option's type, which turn a solicitation into an advertisement
    in the datapath. os-ken does not know them; they join its field tables here."""

    _class = 0x1000


def _register_ericsson_fields() -> None:
    name_to_field = ofp.oxm_from_user.args[1]
    num_to_field = ofp.oxm_to_user.args[1]
    for f in (_EricssonOxm("nd_reserved", 1, type_desc.Int4),
              _EricssonOxm("nd_options_type", 2, type_desc.Int1)):
        name_to_field.setdefault(f.name, f)
        num_to_field.setdefault(f.num, f)


_register_ericsson_fields()


# --- plain -> wire ------------------------------------------------------------------------


def to_match(m: Match) -> parser.OFPMatch:
    """OFPMatch sorts its fields by OXM number, which puts Nicira fields first; OVS wants
    a field's prerequisites before it (eth_type before nw_ttl), so the order is ours."""
    fields = sorted(m, key=lambda kv: _oxm_order(kv[0]))
    return parser.OFPMatch(_ordered_fields=[(k, v) for k, v in fields])


def to_action(a: tuple) -> Any:
    kind = a[0]
    if kind == "output":
        max_len = ofp.OFPCML_NO_BUFFER if a[1] == OFPP_CONTROLLER else 0
        return parser.OFPActionOutput(a[1], max_len)
    if kind == "push_vlan":
        return parser.OFPActionPushVlan(a[1])
    if kind == "pop_vlan":
        return parser.OFPActionPopVlan()
    if kind == "dec_ttl":
        return parser.OFPActionDecNwTtl()
    if kind == "set":
        return parser.OFPActionSetField(**{a[1]: a[2]})
    if kind == "move":
        return parser.NXActionRegMove(src_field=a[1], dst_field=a[2], n_bits=a[3])
    if kind == "resubmit":
        return parser.NXActionResubmitTable(in_port=NX_IN_PORT, table_id=a[1])
    if kind == "learn":
        return _to_learn(a)
    if kind == "ct":  # ("ct", flags, zone field, zone ofs/nbits, recirc table)
        return parser.NXActionCT(flags=a[1], zone_src=a[2], zone_ofs_nbits=a[3],
                                 recirc_table=a[4], alg=0, actions=[])
    if kind == "conjunction":  # ("conjunction", id, k, n): k is 1..n, the wire's clause 0..n-1
        if not 2 <= a[3] <= 64 or not 1 <= a[2] <= a[3]:  # what OVS accepts
            raise ValueError(f"bad conjunction {a!r}: want 1 <= k <= n, 2 <= n <= 64")
        return parser.NXActionConjunction(clause=a[2] - 1, n_clauses=a[3], id_=a[1])
    raise ValueError(f"unknown action {a!r}")


def _nx_field(name: str) -> str:
    """os-ken's name for the NXM header of a plain field name, where there is one: OVS
    writes a learn spec's fields back with these (16-bit NXM_OF_IN_PORT, not the 32-bit
    OXM in_port), and a learned flow outputs to a 16-bit port."""
    try:
        ofp.oxm_get_field_info_by_name(name + "_nxm")
    except KeyError:
        return name
    return name + "_nxm"


def field_bits(name: str) -> int:
    """The width of a field (os-ken name) in bits."""
    if name in _FIELD_BITS:
        return _FIELD_BITS[name]
    return ofp.oxm_get_field_info_by_name(name)[1].size * 8


def _constant(field: str, value: Any) -> tuple[str, int, int]:
    name, value = _nx_field(field), int(value)
    bits = field_bits(name)
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{field}={value:#x} does not fit in {bits} bits")
    return name, value, bits


def _to_learn(a: tuple) -> Any:
    """("learn", table, priority, cookie, match, loads, output_field): NXAST_LEARN of a flow
    with no timeouts or flags that matches the constants ``match`` ((field, value) pairs),
    loads the constants ``loads`` and outputs to the port ``output_field`` holds now."""
    _, table, priority, cookie_, match_, loads, output = a
    specs: list[Any] = []
    for field, value in match_:
        name, value, bits = _constant(field, value)
        specs.append(parser.NXFlowSpecMatch(src=value, dst=(name, 0), n_bits=bits))
    for field, value in loads:
        name, value, bits = _constant(field, value)
        specs.append(parser.NXFlowSpecLoad(src=value, dst=(name, 0), n_bits=bits))
    specs.append(parser.NXFlowSpecOutput(src=(_nx_field(output), 0), dst="", n_bits=16))
    return parser.NXActionLearn(table_id=table, specs=specs, priority=priority,
                                cookie=cookie_)


def to_instructions(instructions: tuple) -> list[Any]:
    out: list[Any] = []
    for ins in instructions:
        kind = ins[0]
        if kind == "meter":
            out.append(parser.OFPInstructionMeter(ins[1], ofp.OFPIT_METER))
        elif kind == "apply":
            actions = [to_action(a) for a in ins[1]]
            out.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
        elif kind == "meta":
            out.append(parser.OFPInstructionWriteMetadata(ins[1], ins[2]))
        elif kind == "goto":
            out.append(parser.OFPInstructionGotoTable(ins[1]))
        else:
            raise ValueError(f"unknown instruction {ins!r}")
    return out


def flow_add(datapath: Any, f: Flow) -> parser.OFPFlowMod:
    return parser.OFPFlowMod(
        datapath, cookie=f.cookie, table_id=f.table, command=ofp.OFPFC_ADD,
        priority=f.priority, match=to_match(f.match), instructions=to_instructions(f.instructions),
        buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
    )


def flow_delete(datapath: Any, f: Flow) -> parser.OFPFlowMod:
    return parser.OFPFlowMod(
        datapath, table_id=f.table, command=ofp.OFPFC_DELETE_STRICT, priority=f.priority,
        match=to_match(f.match), buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
    )


# --- plain -> wire bytes, cached ---------------------------------------------------------
# Each cache is bounded (least recently used goes first), so memory stays flat however
# many flows come and go: a cached flow-mod takes ~280 bytes, a field or instruction
# list ~250, so all four caches full hold ~35 MB (10,000 flows fill 4.3 MB).
CACHED_FLOWS = 32_768
CACHED_PARTS = 32_768
CHUNK = 256 * 1024  # bytes per write: one queue hand-off per chunk, not per message

_HEADER = struct.Struct("!BBHI")  # ofp_header: version, type, length, xid
_FLOW_MOD = struct.Struct(ofp.OFP_FLOW_MOD_PACK_STR0)  # ofp_flow_mod after the header
_OXM_HEADER = struct.Struct("!HH")  # ofp_match: type, length (then fields, then padding)
# an ONF bundle-add message (header, experimenter, bundle id, flags) followed by the
# header of the flow-mod it carries, which repeats the outer xid (bundle extension 3.3)
_BUNDLE_ADD = struct.Struct("!BBHIII" + ofp.ONF_BUNDLE_ADD_MSG_PACK_STR[1:] + "BBHI")
_BUNDLE_CTRL = struct.Struct("!BBHIII" + ofp.ONF_BUNDLE_CTRL_PACK_STR[1:])
_ONF = ofproto_common.ONF_EXPERIMENTER_ID


@functools.lru_cache(maxsize=256)  # bounded by the OXM fields os-ken knows
def _oxm_order(name: str) -> int:
    """The key the fields of a match go out in: the OXM number (as OFPMatch sorts them),
    but Nicira fields that have prerequisites after every OpenFlow field."""
    n = ofp.oxm_from_user_header(name)
    n = n[0] if isinstance(n, tuple) else n
    return n + (1 << 40) if name in _AFTER_PREREQUISITES else n


_AFTER_PREREQUISITES = frozenset({"nw_ttl"})  # needs eth_type IPv4/IPv6 before it


@functools.lru_cache(maxsize=CACHED_PARTS)
def _oxm(field: tuple[str, Any]) -> tuple[int, bytes]:
    """One match field as OFPMatch writes it, with its place in the order: os-ken's OXM
    functions, but converting the value once (OFPMatch converts, masks, converts back
    and converts again) and MAC addresses without netaddr. The byte-equality tests
    compare the result with OFPMatch's for every flow the compiler writes."""
    name, user = field
    kind = _kind(name)
    value, mask = (user if isinstance(user, tuple) else (user, None))
    if kind is not None and isinstance(value, str) and "/" not in value and (
            mask is None or isinstance(mask, str)):
        n = ofp.oxm_from_user_header(name)
        v, m = kind(value), (None if mask is None else kind(mask))
    else:
        n, v, m = ofp.oxm_from_user(name, user)
    if m is not None:  # OFPMatch sends the value with the mask applied
        v = bytes(a & b for a, b in zip(v, m, strict=True))
    buf = bytearray()
    ofp.oxm_serialize(n, v, m, buf, 0)
    return _oxm_order(name), bytes(buf)


@functools.lru_cache(maxsize=256)
def _kind(name: str) -> Callable[[str], bytes] | None:
    """A fast text -> bytes for MAC and IP address fields (os-ken goes through netaddr)."""
    try:
        t = ofp.oxm_get_field_info_by_name(name)[1]
    except KeyError:
        return None
    return {type_desc.MacAddr: _mac,
            type_desc.IPv4Addr: functools.partial(socket.inet_pton, socket.AF_INET),
            type_desc.IPv6Addr: functools.partial(socket.inet_pton, socket.AF_INET6)}.get(t)


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return raw


def match_bytes(m: Match) -> bytes:
    """``ofp_match`` for ``m``, as ``to_match(m).serialize`` writes it."""
    fields = sorted(map(_oxm, m), key=itemgetter(0))  # stable, as OFPMatch's sort
    oxms = b"".join([oxm for _, oxm in fields])
    length = _OXM_HEADER.size + len(oxms)
    return _OXM_HEADER.pack(ofp.OFPMT_OXM, length) + oxms + bytes(-length % 8)


@functools.lru_cache(maxsize=CACHED_PARTS)
def instruction_bytes(instructions: tuple) -> bytes:
    """The instructions as OFPFlowMod writes them (apply-actions put together here from
    each action's cached bytes; the other instructions by os-ken)."""
    out = bytearray()
    for ins in instructions:
        if ins[0] == "apply":
            acts = b"".join(map(_action_bytes, ins[1]))
            out += _APPLY.pack(ofp.OFPIT_APPLY_ACTIONS, _APPLY.size + len(acts)) + acts
        else:
            (obj,) = to_instructions((ins,))
            buf = bytearray()
            obj.serialize(buf, 0)
            out += buf
    return bytes(out)


_APPLY = struct.Struct("!HH4x")  # ofp_instruction_actions before its actions
_SET_FIELD = struct.Struct("!HH")  # ofp_action_set_field before its OXM


@functools.lru_cache(maxsize=CACHED_PARTS)
def _action_bytes(a: tuple) -> bytes:
    """One action as its os-ken class writes it; a set-field (most of them) from the
    OXM bytes the matches use."""
    if a[0] == "set" and not isinstance(a[2], tuple):
        oxm = _oxm((a[1], a[2]))[1]
        length = -(-(_SET_FIELD.size + len(oxm)) // 8) * 8
        return _SET_FIELD.pack(ofp.OFPAT_SET_FIELD, length) + oxm + bytes(
            length - _SET_FIELD.size - len(oxm))
    buf = bytearray()
    obj = to_action(a)
    obj.serialize(buf, 0)
    # what the instruction advances by (some Nicira actions write less and pad later)
    return bytes(buf[:obj.len]).ljust(obj.len, b"\0")


def _body(f: Flow, command: int, cookie: int, instructions: bytes) -> bytes:
    head = _FLOW_MOD.pack(cookie, 0, f.table, command, 0, 0, f.priority, ofp.OFP_NO_BUFFER,
                          ofp.OFPP_ANY, ofp.OFPG_ANY, 0)
    return head + match_bytes(f.match) + instructions


@functools.lru_cache(maxsize=CACHED_FLOWS)
def add_body(f: Flow) -> bytes:
    """The bytes of ``flow_add(dp, f)`` after its 8-byte header."""
    return _body(f, ofp.OFPFC_ADD, f.cookie, instruction_bytes(f.instructions))


@functools.lru_cache(maxsize=CACHED_FLOWS)
def delete_body(f: Flow) -> bytes:
    """The bytes of ``flow_delete(dp, f)`` after its 8-byte header."""
    return _body(f, ofp.OFPFC_DELETE_STRICT, 0, b"")


def flow_mod(body: bytes, xid: int) -> bytes:
    """A whole flow-mod message around a body from :func:`add_body`/:func:`delete_body`."""
    return _HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, _HEADER.size + len(body), xid) + body


def _bundle_ctrl(bundle_id: int, kind: int, flags: int, xid: int) -> bytes:
    return _BUNDLE_CTRL.pack(ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER, _BUNDLE_CTRL.size, xid,
                             _ONF, ofp.ONF_ET_BUNDLE_CONTROL, bundle_id, kind, flags)


def bundle(bodies: Sequence[bytes], bundle_id: int, flags: int, xid: int) -> Iterator[bytes]:
    """Open, one bundle-add per flow-mod body, commit (xids ``xid`` to
    ``xid + len(bodies) + 1`` in that order), in chunks of whole messages of about CHUNK
    bytes: one bytearray, no message object per flow."""
    buf = bytearray(_bundle_ctrl(bundle_id, ofp.ONF_BCT_OPEN_REQUEST, flags, xid))
    pack, v, exp, add, fm = (_BUNDLE_ADD.pack, ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER,
                             ofp.ONF_ET_BUNDLE_ADD_MESSAGE, ofp.OFPT_FLOW_MOD)
    for i, body in enumerate(bodies, xid + 1):
        n = len(body)
        buf += pack(v, exp, _BUNDLE_ADD.size + n, i, _ONF, add, bundle_id, flags,
                    v, fm, _HEADER.size + n, i)
        buf += body
        if len(buf) >= CHUNK:
            yield bytes(buf)
            buf.clear()
    buf += _bundle_ctrl(bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, flags, xid + len(bodies) + 1)
    yield bytes(buf)


# --- wire -> plain ------------------------------------------------------------------------


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return v.lower()
    if isinstance(v, list | tuple):
        return tuple(_norm(x) for x in v)
    return v


def _field(name: str) -> str:
    return name.removesuffix("_nxm")


def from_action(a: Any) -> tuple:
    if isinstance(a, parser.OFPActionOutput):
        return ("output", a.port)
    if isinstance(a, parser.OFPActionPushVlan):
        return ("push_vlan", a.ethertype)
    if isinstance(a, parser.OFPActionPopVlan):
        return ("pop_vlan",)
    if isinstance(a, parser.OFPActionDecNwTtl):
        return ("dec_ttl",)
    if isinstance(a, parser.OFPActionSetField):
        return ("set", _field(a.key), _norm(a.value))
    if isinstance(a, parser.NXActionRegLoad | parser.NXActionRegLoad2):
        return _from_load(a)
    if isinstance(a, parser.NXActionLearn):
        return _from_learn(a)
    if isinstance(a, parser.NXActionRegMove):
        # OVS reports NXM headers (NXM_OF_ETH_SRC), os-ken names them "eth_src_nxm"
        return ("move", _field(a.src_field), _field(a.dst_field), a.n_bits)
    if isinstance(a, parser.NXActionResubmitTable) and a.in_port == NX_IN_PORT:
        return ("resubmit", a.table_id)
    if isinstance(a, parser.NXActionCT):
        return ("ct", a.flags, _field(a.zone_src or ""), a.zone_ofs_nbits, a.recirc_table)
    if isinstance(a, parser.NXActionConjunction):
        # OVS keeps a flow's actions in the order given (no sorting), so several
        # conjunction actions read back in the order they were written
        return ("conjunction", a.id, a.clause + 1, a.n_clauses)
    return ("unknown", type(a).__name__)


def _from_load(a: Any) -> tuple:
    """A load of a whole field (OVS writes a learned flow's loads as NXAST_REG_LOAD) is the
    set_field it does the work of; a load of part of a field is not something we write."""
    if isinstance(a, parser.NXActionRegLoad):
        ofs, bits = a.ofs_nbits >> 6, (a.ofs_nbits & 0x3F) + 1
        if ofs == 0 and bits == field_bits(a.dst):
            return ("set", _field(a.dst), a.value)
        return ("unknown", "NXActionRegLoad", _field(a.dst), ofs, bits, a.value)
    if a.mask is None:
        return ("set", _field(a.dst), _norm(a.value))
    return ("unknown", "NXActionRegLoad2", _field(a.dst), _norm(a.value), _norm(a.mask))


def _whole(subfield: Any, n_bits: int) -> str | None:
    """The plain name of a (field, offset) subfield that covers its whole field."""
    name, ofs = subfield
    return _field(name) if ofs == 0 and n_bits == field_bits(name) else None


def _from_learn(a: Any) -> tuple:
    """The inverse of :func:`_to_learn`; a learn action of any other shape reads back as
    ("unknown", "NXActionLearn", ...), which equals no flow we write (so it is replaced)."""
    unknown = ("unknown", "NXActionLearn", repr(a))
    if (a.idle_timeout, a.hard_timeout, a.flags, a.fin_idle_timeout, a.fin_hard_timeout) != (
            0, 0, 0, 0, 0):
        return unknown
    match_: list[tuple[str, int]] = []
    loads: list[tuple[str, int]] = []
    outputs: list[str] = []
    for spec in a.specs:
        if isinstance(spec, parser.NXFlowSpecOutput):
            name, ofs = spec.src
            if ofs != 0 or spec.n_bits != 16:
                return unknown
            outputs.append(_field(name))
            continue
        dst = _whole(spec.dst, spec.n_bits)
        if dst is None or isinstance(spec.src, tuple):  # only constants, whole fields
            return unknown
        kind = match_ if isinstance(spec, parser.NXFlowSpecMatch) else loads
        kind.append((dst, int(spec.src)))
    if len(outputs) != 1 or match_ != sorted(match_):
        return unknown
    return ("learn", a.table_id, a.priority, a.cookie, tuple(match_), tuple(loads), outputs[0])


def from_instruction(ins: Any) -> tuple:
    if isinstance(ins, parser.OFPInstructionMeter):
        return ("meter", ins.meter_id)
    if isinstance(ins, parser.OFPInstructionActions):
        kind = "apply" if ins.type == ofp.OFPIT_APPLY_ACTIONS else f"actions{ins.type}"
        return (kind, tuple(from_action(a) for a in ins.actions))
    if isinstance(ins, parser.OFPInstructionWriteMetadata):
        return ("meta", ins.metadata, ins.metadata_mask)
    if isinstance(ins, parser.OFPInstructionGotoTable):
        return ("goto", ins.table_id)
    return ("unknown", type(ins).__name__)


def from_stats(stat: Any) -> Flow:
    """A flow-stats entry as a plain Flow (comparable with the compiler's output)."""
    m = tuple(sorted((k, _norm(v)) for k, v in stat.match.items()))
    ins = [from_instruction(i) for i in stat.instructions]
    ins = [i for i in ins if not (i[0] == "apply" and not i[1])]
    ins.sort(key=lambda i: _INSTRUCTION_ORDER.get(i[0], 9))
    return Flow(stat.table_id, stat.priority, m, tuple(ins), stat.cookie)
