"""LLDP probes for link discovery, authenticated so a VM cannot fake a fabric link.

Each probe carries the sending switch and port plus an HMAC under a key that exists
only in this controller process; a probe that fails the check is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from os_ken.lib.packet import ethernet, lldp, packet

LLDP_MAC = "01:80:c2:00:00:0e"
_KEY = os.urandom(16)


def _tag(dpid: int, port_no: int) -> bytes:
    return hmac.new(_KEY, f"{dpid:016x}:{port_no}".encode(), hashlib.sha256).digest()[:16]


def probe(dpid: int, port_no: int, src_mac: str) -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(LLDP_MAC, src_mac, 0x88CC))
    tlvs = [
        lldp.ChassisID(subtype=lldp.ChassisID.SUB_LOCALLY_ASSIGNED,
                       chassis_id=f"dpid:{dpid:016x}".encode()),
        lldp.PortID(subtype=lldp.PortID.SUB_PORT_COMPONENT, port_id=str(port_no).encode()),
        lldp.TTL(ttl=120),
        lldp.SystemName(system_name=b"vfence:" + _tag(dpid, port_no).hex().encode()),
        lldp.End(),
    ]
    pkt.add_protocol(lldp.lldp(tlvs))
    pkt.serialize()
    return bytes(pkt.data)


def parse(data: bytes) -> tuple[int, int] | None:
    """(dpid, port) of a genuine probe from this controller, else None."""
    try:
        pkt = packet.Packet(data)
        body = pkt.get_protocol(lldp.lldp)
        if body is None:
            return None
        fields = {type(t): t for t in body.tlvs}
        chassis = fields[lldp.ChassisID].chassis_id.decode()
        port_no = int(fields[lldp.PortID].port_id.decode())
        tag = fields[lldp.SystemName].system_name.decode().removeprefix("vfence:")
        dpid = int(chassis.removeprefix("dpid:"), 16)
    except (KeyError, ValueError, UnicodeDecodeError, AttributeError, TypeError):
        return None
    if not hmac.compare_digest(bytes.fromhex(tag), _tag(dpid, port_no)):
        return None
    return dpid, port_no
