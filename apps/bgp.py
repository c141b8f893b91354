"""BGP host routes: every routed VM's /32 (and /128, over the same session: IPv6 unicast
is negotiated with it) announced to its external network's router with the uplink
address (address6) of the host it is on as next hop, re-announced the moment it
moves (one UPDATE: the new next hop replaces the old, an implicit withdrawal). The
speaker is os-ken's (os_ken.services.protocols.bgp, as neutron-dynamic-routing uses
it); what to announce is controller/external.py's, from the state alone.

One speaker per controller process (os-ken keeps one BGP core), so one local AS number
(the policy checks it). Its router id is the controller's own address toward the first
peer, found by the kernel's route lookup (no packet is sent for it).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import Any

from vfence.controller import external
from vfence.controller.model import Bgp, NetworkState, PortRef

LOG = logging.getLogger("vfence.bgp")


def local_address(peer: str) -> str:
    """This machine's source address toward ``peer`` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((peer, 179))
        return str(s.getsockname()[0])


class Announcer:
    """Keeps the speaker's peers and announcements equal to what the state asks for."""

    def __init__(self, on_session: Any = None, local: str | None = None) -> None:
        # re-entrant: os-ken calls the session handlers inline, from inside neighbor_del
        self.lock = threading.RLock()
        self.early: dict[str, int] = {}  # VM -> the host its first frame came from (moving)
        self.speaker: Any = None
        self.asn: int | None = None
        self.peers: dict[str, Bgp] = {}  # peer address -> its session's settings
        self.routes: dict[str, dict[str, str]] = {}  # external -> prefix -> next hop
        self.sessions: dict[str, dict[str, Any]] = {}  # peer -> state, since, updates
        self.on_session = on_session  # (peer, asn, up) on a session's change
        # this process's own address toward the peers (a cluster member's: members on one
        # machine each have their own); else the kernel's route lookup finds it
        self.local = local

    def status(self) -> dict[str, Any]:
        """What GET /v1/external shows: sessions and the routes announced."""
        with self.lock:
            return {"sessions": {p: dict(s) for p, s in self.sessions.items()},
                    "routes": {e: dict(r) for e, r in self.routes.items()}}

    def sync(self, state: NetworkState) -> None:
        """Peers, then routes: announce what is new or moved, withdraw what is gone. One
        BGP network at most (the policy checks it), so routes compare by prefix alone."""
        wanted = {e.name: e.bgp for e in state.policy.externals if e.bgp is not None}
        with self.lock:
            self._peers(wanted)
            if self.speaker is None:
                return
            announce = external.announcements(self._early(state))
            for ext in set(self.routes) | set(announce):
                have, want = self.routes.get(ext, {}), announce.get(ext, {})
                for prefix in have.keys() - want.keys():
                    self.speaker.prefix_del(prefix)
                for prefix, nh in want.items():
                    if have.get(prefix) != nh:
                        self.speaker.prefix_add(prefix, next_hop=nh)
                        LOG.info("announced %s via %s", prefix, nh)
            self.routes = announce

    def moved(self, state: NetworkState, vm: str, dpid: int) -> None:
        """The VM's first frame at its standby port on ``dpid``: it runs there now (the
        datapath switched over already). Its routes move at once, before the controller
        has confirmed the move (the outside follows as fast as the inside does), and stay
        there until the move is confirmed or abandoned. Called from the OpenFlow thread:
        never raises."""
        with self.lock:
            if self.early.get(vm) == dpid or vm not in state.bindings:
                return  # once per move (a standby port's frames come metered, not once)
            self.early[vm] = dpid
        try:
            self.sync(state)
        except Exception:
            LOG.exception("announcing %s's move failed", vm)

    def _early(self, state: NetworkState) -> NetworkState:
        """The state with each VM that moved before the controller confirmed it at the
        host its frames come from; a move confirmed or abandoned is forgotten."""
        moved = {}
        for vm, dpid in list(self.early.items()):
            b, sb = state.bindings.get(vm), state.standby.get(vm)
            if b is None or b.port.dpid == dpid or sb is None or sb.port.dpid != dpid:
                del self.early[vm]
            else:
                moved[vm] = dataclasses.replace(b, port=PortRef(dpid, 0))
        return dataclasses.replace(state, bindings={**state.bindings, **moved}) if moved \
            else state

    def _peers(self, wanted: dict[str, Bgp]) -> None:
        asns = {b.local_asn for b in wanted.values()}
        if self.speaker is not None and (not wanted or self.asn not in asns):
            self.speaker.shutdown()  # no BGP any more, or another AS number
            self.speaker, self.peers, self.routes, self.sessions = None, {}, {}, {}
        if not wanted:
            return
        if self.speaker is None:
            from os_ken.services.protocols.bgp.bgpspeaker import BGPSpeaker

            first = next(iter(wanted.values()))
            self.asn = first.local_asn
            # with an address of its own (a cluster member), the speaker listens there and
            # the peer connects to it: os-ken binds an outgoing session to an address
            # only with a fixed port, which TIME_WAIT blocks after every reset
            listen = {"bgp_server_hosts": (self.local,), "bgp_server_port": 179} \
                if self.local else {"bgp_server_port": 0}
            self.speaker = BGPSpeaker(
                as_number=first.local_asn, router_id=self.local or local_address(first.peer),
                peer_up_handler=self._up, peer_down_handler=self._down, **listen)
        want = {b.peer: b for b in wanted.values()}
        for peer in self.peers.keys() - want.keys():
            self.speaker.neighbor_del(peer)
            self.sessions.pop(peer, None)
        for peer, b in want.items():
            if self.peers.get(peer) != b:
                if peer in self.peers:
                    self.speaker.neighbor_del(peer)
                self.speaker.neighbor_add(peer, b.peer_asn,
                                          connect_mode="passive" if self.local else "active",
                                          local_address=self.local or local_address(peer),
                                          enable_ipv6=True)
                self.sessions[peer] = {"state": "connecting", "since": time.time(),
                                       "peer_asn": b.peer_asn}
        self.peers = want

    def _session(self, peer: str, asn: int, up: bool) -> None:
        """os-ken names the peer by its router id, which need not be its address: the
        session is the one with that AS number (one BGP network per controller)."""
        with self.lock:
            for s in self.sessions.values():
                if s["peer_asn"] == asn:
                    s.update(state="established" if up else "down", since=time.time())
        LOG.info("BGP session with %s (AS %s) %s", peer, asn, "up" if up else "down")
        if self.on_session is not None:
            try:  # (an exception here would reset the session: os-ken calls this inline)
                self.on_session(peer, asn, up)
            except Exception:
                LOG.exception("recording the BGP session's change failed")

    def _up(self, remote_ip: str, remote_as: int) -> None:
        self._session(remote_ip, remote_as, True)

    def _down(self, remote_ip: str, remote_as: int) -> None:
        self._session(remote_ip, remote_as, False)

    def close(self) -> None:
        with self.lock:
            if self.speaker is not None:
                self.speaker.shutdown()
                self.speaker = None
