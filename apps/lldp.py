"""LLDP probes for link discovery, that neither a VM nor a replay can turn into a link.

A probe carries the sending switch and port, a fresh nonce (its wall-clock time in
milliseconds and random bits) and an HMAC over all three under a key that exists only in
this controller process, or, for a cluster, in the shared database (:func:`use_key`; a
probe one member's switch sent is punted to every member). The controller keeps the
nonces it sent: a probe counts once, only before it expires, and only if the nonce was
issued for the switch and port the probe names; a cluster member also takes a probe it
did not send, if the key signed it, once, and within its lifetime by the nonce's time.
Probes go out of operator-marked fabric ports only, and the service accepts a link only
between two such ports of two switches: a VM echoing or relaying probes has nothing to
work with.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import time

from os_ken.lib.packet import ethernet, lldp, packet

LLDP_MAC = "01:80:c2:00:00:0e"
PROBE_LIFETIME = 10.0  # seconds a probe is valid after it was sent
_KEYS = [os.urandom(16)]


def use_key(key: bytes) -> None:
    """Sign and check probes with ``key`` (a cluster's shared one) from now on."""
    _KEYS[0] = key


def _tag(dpid: int, port_no: int, nonce: bytes) -> bytes:
    msg = f"{dpid:016x}:{port_no}:".encode() + nonce
    return hmac.new(_KEYS[0], msg, hashlib.sha256).digest()[:16]


def probe(dpid: int, port_no: int, src_mac: str, nonce: bytes) -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(LLDP_MAC, src_mac, 0x88CC))
    tlvs = [
        lldp.ChassisID(subtype=lldp.ChassisID.SUB_LOCALLY_ASSIGNED,
                       chassis_id=f"dpid:{dpid:016x}".encode()),
        lldp.PortID(subtype=lldp.PortID.SUB_PORT_COMPONENT, port_id=str(port_no).encode()),
        lldp.TTL(ttl=int(PROBE_LIFETIME)),
        lldp.SystemName(system_name=b"vfence:" + nonce.hex().encode() + b":"
                        + _tag(dpid, port_no, nonce).hex().encode()),
        lldp.End(),
    ]
    pkt.add_protocol(lldp.lldp(tlvs))
    pkt.serialize()
    return bytes(pkt.data)


def parse(data: bytes) -> tuple[int, int, bytes] | None:
    """(dpid, port, nonce) of a probe made by this controller process, else None."""
    try:
        pkt = packet.Packet(data)
        body = pkt.get_protocol(lldp.lldp)
        if body is None:
            return None
        fields = {type(t): t for t in body.tlvs}
        chassis = fields[lldp.ChassisID].chassis_id.decode()
        port_no = int(fields[lldp.PortID].port_id.decode())
        nonce_hex, tag = fields[lldp.SystemName].system_name.decode().removeprefix(
            "vfence:").split(":")
        nonce = bytes.fromhex(nonce_hex)
        dpid = int(chassis.removeprefix("dpid:"), 16)
    except (KeyError, ValueError, UnicodeDecodeError, AttributeError, TypeError):
        return None
    if not hmac.compare_digest(bytes.fromhex(tag), _tag(dpid, port_no, nonce)):
        return None
    return dpid, port_no, nonce


class ProbeBook:
    """Nonces sent and not yet used: each one proves one fresh probe, once."""

    def __init__(self, lifetime: float = PROBE_LIFETIME, shared: bool = False) -> None:
        self.lifetime, self.shared = lifetime, shared
        self._sent: dict[bytes, tuple[int, int, float]] = {}
        self._taken: dict[bytes, float] = {}  # others' nonces redeemed (shared): until when
        self._lock = threading.Lock()

    def issue(self, dpid: int, port_no: int, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        nonce = struct.pack("!Q", int(time.time() * 1000)) + os.urandom(8)
        with self._lock:
            self._sent = {n: v for n, v in self._sent.items() if v[2] > now}
            self._sent[nonce] = (dpid, port_no, now + self.lifetime)
        return nonce

    def redeem(self, dpid: int, port_no: int, nonce: bytes, now: float | None = None) -> bool:
        """True the first time a probe with this nonce, sent from (dpid, port), comes
        back before it expires."""
        now = time.monotonic() if now is None else now
        with self._lock:
            sent = self._sent.pop(nonce, None)
            if sent is not None:  # our own: once (not again as another member's)
                if self.shared:
                    self._taken[nonce] = sent[2] + 1.0
                return sent[:2] == (dpid, port_no) and now <= sent[2]
            return self.shared and self._foreign(nonce, now)

    def _foreign(self, nonce: bytes, now: float) -> bool:
        """Another member's probe (its signature was checked by :func:`parse`)."""
        if len(nonce) != 16:
            return False
        age = time.time() - struct.unpack("!Q", nonce[:8])[0] / 1000
        self._taken = {n: t for n, t in self._taken.items() if t > now}
        if not -1.0 <= age <= self.lifetime or nonce in self._taken:
            return False
        self._taken[nonce] = now + self.lifetime + 1.0
        return True
