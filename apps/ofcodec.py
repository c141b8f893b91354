"""Translation between plain :class:`controller.flows.Flow` and os-ken OpenFlow 1.3 messages.

Both directions live here so that a flow written and read back compares equal: the
basis of "a controller restart with nothing changed sends zero flow-mods".
"""

from __future__ import annotations

from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from vfence.controller.flows import OFPP_CONTROLLER, Flow, Match

NX_IN_PORT = 0xFFF8  # Nicira actions use 16-bit port numbers: "keep the packet's in_port"
_INSTRUCTION_ORDER = {"meter": 0, "apply": 1, "meta": 2, "goto": 3}


# --- plain -> wire ------------------------------------------------------------------------


def to_match(m: Match) -> parser.OFPMatch:
    return parser.OFPMatch(**dict(m))


def to_action(a: tuple) -> Any:
    kind = a[0]
    if kind == "output":
        max_len = ofp.OFPCML_NO_BUFFER if a[1] == OFPP_CONTROLLER else 0
        return parser.OFPActionOutput(a[1], max_len)
    if kind == "push_vlan":
        return parser.OFPActionPushVlan(a[1])
    if kind == "pop_vlan":
        return parser.OFPActionPopVlan()
    if kind == "set":
        return parser.OFPActionSetField(**{a[1]: a[2]})
    if kind == "move":
        return parser.NXActionRegMove(src_field=a[1], dst_field=a[2], n_bits=a[3])
    if kind == "resubmit":
        return parser.NXActionResubmitTable(in_port=NX_IN_PORT, table_id=a[1])
    if kind == "ct":  # ("ct", flags, zone field, zone ofs/nbits, recirc table)
        return parser.NXActionCT(flags=a[1], zone_src=a[2], zone_ofs_nbits=a[3],
                                 recirc_table=a[4], alg=0, actions=[])
    raise ValueError(f"unknown action {a!r}")


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
    if isinstance(a, parser.OFPActionSetField):
        return ("set", a.key, _norm(a.value))
    if isinstance(a, parser.NXActionRegMove):
        # OVS reports NXM headers (NXM_OF_ETH_SRC), os-ken names them "eth_src_nxm"
        return ("move", _field(a.src_field), _field(a.dst_field), a.n_bits)
    if isinstance(a, parser.NXActionResubmitTable) and a.in_port == NX_IN_PORT:
        return ("resubmit", a.table_id)
    if isinstance(a, parser.NXActionCT):
        return ("ct", a.flags, _field(a.zone_src or ""), a.zone_ofs_nbits, a.recirc_table)
    return ("unknown", type(a).__name__)


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
