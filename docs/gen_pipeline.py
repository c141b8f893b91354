"""Writes docs/pipeline.md from controller/pipeline.py and the compiler's own output, so the
document cannot say something the code does not do.

    PYTHONPATH=src python -m docs.gen_pipeline > docs/pipeline.md

The samples are hv1's flows for the finance example on three hosts, rendered in
``ovs-ofctl`` style by :func:`ofctl` (no switch is needed, so the samples are the same on
every machine); tests/unit/test_pipeline_declared.py checks the file is current.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from tests.unit.netfixtures import FINANCE_ON_3, HV1, finance, leaf_spine

from vfence.controller import desired, pipeline
from vfence.controller.flows import OFPP_CONTROLLER, OFPP_IN_PORT, OFPVID_PRESENT, Flow, cookie
from vfence.controller.pipeline import TABLES, Band, TableSpec, table_name

BRIDGE = "br-int"
SAMPLES = 5  # flows per table at most: the miss flow and the busiest bands

# --- ovs-ofctl style ------------------------------------------------------------------------

_SHORT: dict[tuple[object, object], str] = {
    (0x0800, None): "ip", (0x0800, 1): "icmp", (0x0800, 6): "tcp", (0x0800, 17): "udp",
    (0x86DD, None): "ipv6", (0x86DD, 6): "tcp6", (0x86DD, 17): "udp6", (0x86DD, 58): "icmp6",
    (0x0806, None): "arp"}
_NAMES = {"eth_src": "dl_src", "eth_dst": "dl_dst", "ipv4_src": "nw_src", "ipv4_dst": "nw_dst",
          "tcp_src": "tp_src", "tcp_dst": "tp_dst", "udp_src": "tp_src", "udp_dst": "tp_dst",
          "icmpv4_type": "icmp_type", "icmpv4_code": "icmp_code", "icmpv6_type": "icmp_type",
          "icmpv6_code": "icmp_code", "ipv6_nd_target": "nd_target", "ipv6_nd_sll": "nd_sll",
          "ipv6_nd_tll": "nd_tll"}
_NXM = {"eth_src": "NXM_OF_ETH_SRC", "eth_dst": "NXM_OF_ETH_DST", "arp_sha": "NXM_NX_ARP_SHA",
        "arp_tha": "NXM_NX_ARP_THA", "arp_spa": "NXM_OF_ARP_SPA", "arp_tpa": "NXM_OF_ARP_TPA",
        "reg5": "NXM_NX_REG5", "reg4": "NXM_NX_REG4", "reg10": "NXM_NX_REG10",
        "reg11": "NXM_NX_REG11", "vlan_pcp": "OXM_OF_VLAN_PCP", "in_port": "NXM_OF_IN_PORT",
        "vlan_tci": "NXM_OF_VLAN_TCI"}


def _prefix(value: str, mask: str) -> str | None:
    """An IP address and netmask as OVS prints them: address/prefix length."""
    try:
        bits = int(ipaddress.ip_address(mask))
    except ValueError:
        return None  # a MAC mask
    return f"{value}/{bin(bits).count('1')}"


def _value(field: str, v: object) -> str:
    if isinstance(v, tuple):
        value, mask = v
        if field == "ct_state":
            return "".join(("+" if value & bit else "-") + name
                           for name, bit in pipeline.CT_STATES.items() if mask & bit)
        if isinstance(mask, int):
            return f"{value:#x}/{mask:#x}"
        return _prefix(value, mask) or f"{value}/{mask}"
    if isinstance(v, int) and field.startswith(("metadata", "reg")):
        return f"{v:#x}"
    return str(v)


# roughly the order OVS prints match fields in (lib/match.c)
_ORDER = ("conj_id", "ct_state", "eth_type", "reg0", "reg1", "reg2", "reg3", "reg4", "reg5",
          "metadata", "in_port", "vlan_vid", "eth_src", "eth_dst", "arp_op", "arp_spa", "arp_tpa",
          "arp_sha", "arp_tha", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "ip_proto",
          "udp_src", "tcp_dst", "udp_dst", "icmpv4_type", "icmpv4_code", "icmpv6_type",
          "icmpv6_code", "ipv6_nd_target", "ipv6_nd_sll", "ipv6_nd_tll")


def _match(m: tuple) -> list[str]:
    fields = dict(m)
    short = _SHORT.get((fields.get("eth_type"), fields.get("ip_proto")))
    if short is not None:
        fields.pop("ip_proto", None)
    else:
        short = _SHORT.get((fields.get("eth_type"), None))
    out = []
    for f in sorted(fields, key=lambda f: _ORDER.index(f) if f in _ORDER else len(_ORDER)):
        v = fields[f]
        if f == "eth_type":
            out.append(short or f"dl_type={v:#06x}")
        elif f == "vlan_vid":
            out.append(f"dl_vlan={v & 0xFFF}" if v & OFPVID_PRESENT else "vlan_tci=0x0000/0x1fff")
        else:
            out.append(f"{_NAMES.get(f, f)}={_value(f, v)}")
    return out


def _zone(src: str, ofs_nbits: int) -> str:
    ofs, nbits = ofs_nbits >> 6, (ofs_nbits & 63) + 1
    return f"zone={_NXM.get(src, src)}[{ofs}..{ofs + nbits - 1}]"


def _action(a: tuple) -> str:
    kind = a[0]
    if kind == "output":
        return {OFPP_CONTROLLER: "CONTROLLER:65535", OFPP_IN_PORT: "IN_PORT"}.get(
            a[1], f"output:{a[1]}")
    if kind == "push_vlan":
        return f"push_vlan:{a[1]:#x}"
    if kind == "set":
        return f"set_field:{_value(a[1], a[2])}->{a[1]}"
    if kind == "move":
        bits = "" if a[1] != "reg10" and a[2] != "reg10" else f"[0..{a[3] - 1}]"
        src, dst = (_NXM[a[1]] + (bits if a[1] == "reg10" else "[]"),
                    _NXM[a[2]] + (bits if a[2] == "reg10" else "[]"))
        return f"move:{src}->{dst}"
    if kind == "learn":  # ("learn", table, priority, cookie, match, loads, output field)
        _, table, prio, ck, m, loads, out = a
        specs = [f"{_NXM[f]}[]={v:#x}" for f, v in m]
        specs += [f"load:{v:#x}->{_NXM[f]}[]" for f, v in loads]
        specs.append(f"output:{_NXM[out]}[{'' if out == 'in_port' else '0..15'}]")
        return f"learn(table={table},priority={prio},cookie={ck:#x},{','.join(specs)})"
    if kind == "resubmit":
        return f"resubmit(,{a[1]})"
    if kind == "ct":
        _, flags, src, ofs_nbits, recirc = a
        args = ["commit"] if flags & pipeline.CT_COMMIT else []
        args += [] if recirc == pipeline.CT_NO_RECIRC else [f"table={recirc}"]
        return f"ct({','.join([*args, _zone(src, ofs_nbits)])})"
    if kind == "conjunction":  # ("conjunction", id, k, n), k 1-based as OVS prints it
        return f"conjunction({a[1]},{a[2]}/{a[3]})"
    return str(kind)


def _instruction(ins: tuple) -> list[str]:
    kind = ins[0]
    if kind == "apply":
        return [_action(a) for a in ins[1]]
    if kind == "meta":
        return [f"write_metadata:{ins[1]:#x}/{ins[2]:#x}"]
    return [f"{'goto_table' if kind == 'goto' else kind}:{ins[1]}"]


def ofctl(f: Flow) -> str:
    """One flow as ``ovs-ofctl --no-stats dump-flows`` prints it (near enough: OVS orders
    match fields its own way)."""
    actions = [a for ins in f.instructions for a in _instruction(ins)] or ["drop"]
    return (f" cookie={f.cookie:#x}, table={f.table}, "
            f"{','.join([f'priority={f.priority}', *_match(f.match)])} "
            f"actions={','.join(actions)}")


# --- the document ---------------------------------------------------------------------------


def _samples(spec: TableSpec, flows: Iterable[Flow]) -> tuple[list[Flow], int]:
    """The table's miss flow and the first flow of each of its busiest bands."""
    mine = sorted(f for f in flows if f.table == spec.number)
    first: dict[Band, Flow] = {}
    count: Counter[Band] = Counter()
    for f in mine:
        band = spec.band_at(f.priority)
        if band is not None:
            first.setdefault(band, f)
            count[band] += 1
    miss = [b for b in first if b.low == pipeline.PRIO_MISS]
    busy = sorted((b for b in first if b not in miss), key=lambda b: (-count[b], -b.high))
    chosen = [first[b] for b in miss + busy[:SAMPLES - len(miss)]]
    return sorted(chosen, key=lambda f: -f.priority), len(mine)


def _prio(b: Band) -> str:
    return str(b.low) if b.low == b.high else f"{b.low}..{b.high}"


def _next(spec: TableSpec) -> str:
    return ", ".join(f"{int(t)} ({table_name(t)})" for t in spec.next) or "none (output or drop)"


def _table_section(spec: TableSpec, flows: list[Flow]) -> list[str]:
    chosen, total = _samples(spec, flows)
    out = [f"## Table {int(spec.number)}: {spec.name}", "", f"Job: {spec.job}", "", spec.detail,
           "",
           f"- next: {_next(spec)}",
           "- cookies: " + ", ".join(f"{o.name} (`{cookie(o):#x}`)" for o in spec.owners), "",
           "| priority | band | owner | what |", "|---|---|---|---|"]
    out += [f"| {_prio(b)} | {b.name} | {b.owner.name} | {b.job} |"
            for b in sorted(spec.bands, key=lambda b: -b.high)]
    out += ["", f"hv1, {len(chosen)} of its {total} flows in this table:", "", "```",
            f"$ ovs-ofctl -O OpenFlow13 --no-stats --rsort dump-flows {BRIDGE} "
            f"table={int(spec.number)}", *(ofctl(f) for f in chosen), "```", ""]
    return out


def _reference() -> list[str]:
    out = ["## Meters", "", "Everything a switch sends to the controller passes one "
           "(OFPMF_PKTPS, a drop band).", "", "| id | name | rate (packets/s) | burst | for |",
           "|---|---|---|---|---|"]
    out += [f"| {m.id} | {m.name} | {m.rate_pps} | {m.burst} | {m.job} |"
            for m in pipeline.METERS]
    out += ["", "## Cookies", "",
            f"Top byte `{pipeline.COOKIE_MAGIC:#x} | kind`, low {pipeline.COOKIE_ID_BITS} bits "
            "the owner's id: all flows of one owner are found by cookie "
            f"(`ovs-ofctl dump-flows {BRIDGE} cookie=0xa200000000000007/-1`: VM tag 7).", "",
            "| kind | owner | owns | id |", "|---|---|---|---|"]
    out += [f"| {int(o)} | {o.name} | {s.owns} | {s.owner_id} |"
            for o, s in pipeline.OWNERS.items()]
    out += ["", "## Metadata and registers", "", "| field | bits | holds |", "|---|---|---|"]
    out += [f"| {s.field} | {s.shift}-{s.shift + s.bits - 1} | {s.holds} |"
            for s in pipeline.LAYOUT]
    out += ["", "## Conntrack", "",
            f"`ct(zone=reg5)` in table {int(pipeline.Table.CONNTRACK)} recirculates to "
            f"table {int(pipeline.Table.POLICY)}; allowed new connections are committed "
            f"(flag {pipeline.CT_COMMIT}) without recirculation (table "
            f"{pipeline.CT_NO_RECIRC:#x}). ct_state bits: "
            + ", ".join(f"{n} {v:#04x}" for n, v in pipeline.CT_STATES.items()) + ".", ""]
    return out


def render() -> str:
    st = finance(leaf_spine(3, 2), FINANCE_ON_3)
    flows = sorted(desired.compile_network(st)[HV1])
    out = ["# The OpenFlow pipeline", "",
           "<!-- generated by `PYTHONPATH=src python -m docs.gen_pipeline > docs/pipeline.md` "
           "from controller/pipeline.py and the compiler: do not edit by hand -->", "",
           " ".join((pipeline.__doc__ or "").split("\n\n")[-1].split()), "",
           "Samples: hv1's flows for `mininet_topos/finance.yaml` placed on three hosts and "
           "two spines (" + ", ".join(f"{vm} on {st.switches[d].name} port {p}"
                                      for vm, (d, p) in FINANCE_ON_3.items())
           + "), rendered from the compiler's output in `ovs-ofctl` style, not read from a "
           "switch.", "",
           "| table | name | job | next |", "|---|---|---|---|"]
    out += [f"| {int(t.number)} | {t.name} | {t.job} | {_next(t)} |" for t in TABLES]
    out.append("")
    for spec in TABLES:
        out += _table_section(spec, flows)
    out += _reference()
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
