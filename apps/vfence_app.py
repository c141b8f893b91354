"""The os-ken application: the only code that talks OpenFlow.

Event handlers run on os-ken's event thread and must never block on a switch reply,
so every piece of work that may program a switch is queued to one worker thread
(``self.work``). That thread calls the service; the service calls back
:meth:`VfenceApp.program`, which sends a bundle and waits for the barrier.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib import hub
from os_ken.lib.packet import ethernet, icmp, ipv4, packet, tcp, udp
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from vfence.controller import bridged as controller_bridged
from vfence.controller import dhcp, dns_updates, external, records
from vfence.controller.compiler import ETH_TYPE_LLDP, ETH_TYPE_VLAN
from vfence.controller.flows import Owner, cookie, cookie_owner
from vfence.controller.member import Member
from vfence.controller.model import Binding, Link, NetworkState, PortRef
from vfence.controller.pipeline import METERS, SPOOF_DROP_KINDS, Table
from vfence.controller.reconcile import FlowDiff
from vfence.controller.replica import Replica
from vfence.controller.routing import answering_gateway
from vfence.controller.service import Service

from . import bgp, bridged, guest_config, lldp, ofcodec, router_answers

LOG = logging.getLogger("vfence.app")

SETTLE_SECONDS = 1.5  # after connect: time for LLDP to find links before a full reconcile
LLDP_INTERVAL = 5.0
AUDIT_INTERVAL = 2.0
AUDIT_SHARE = 0.1  # of the controller's time, at most, for reading drop counters
REPLY_TIMEOUT = 10.0
ROLE_TIMEOUT = 2.0  # a role request unanswered this long: not master (tried next round)
GATEWAY_PROBE_INTERVAL = 5.0  # ARP for each uplink's external gateway (its MAC may move)
PROBE_ANSWER_WINDOW = 2.0  # an ARP reply later than this after our probe is not believed
BGP_SYNC_INTERVAL = 5.0  # announcements follow every change at once; this catches up
ADVERT_INTERVAL = 200.0  # unsolicited router advertisements (RFC 4861's MinRtrAdvInterval
# default; a guest keeps its router for ROUTER_LIFETIME, far longer)


def _l4(pkt: Any) -> tuple[str, int | None]:
    """(protocol, destination port) of a sampled packet, for the audit trail."""
    for proto_cls, name in ((tcp.tcp, "tcp"), (udp.udp, "udp")):
        seg = pkt.get_protocol(proto_cls)
        if seg is not None:
            return name, seg.dst_port
    if pkt.get_protocol(icmp.icmp) is not None:
        return "icmp", None
    ip4 = pkt.get_protocol(ipv4.ipv4)
    return (f"ip/{ip4.proto}", None) if ip4 is not None else ("l2", None)


class SwitchError(RuntimeError):
    pass


class _Pending:
    """Replies and errors for one request (by switch and xid), or errors for a run of
    ``count`` messages with consecutive xids (a bundle: one record, not one per flow)."""

    def __init__(self, key: tuple[int, int], count: int = 1, final_error: bool = False
                 ) -> None:
        self.key = key  # (dpid, first xid)
        self.count = count
        self.final_error = final_error  # an error is the answer (no reply will follow)
        self.done = threading.Event()
        self.replies: list[Any] = []
        self.errors: list[Any] = []

    def holds(self, dpid: int, xid: int) -> bool:
        return dpid == self.key[0] and 0 <= xid - self.key[1] < self.count


class VfenceApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service: Service = kwargs["vfence_service"]
        self.service.switches.programmer = self
        self.datapaths: dict[int, Any] = {}
        self.ports: dict[int, dict[int, tuple[str, str]]] = {}  # dpid -> no -> (name, mac)
        # (dpid, xid): each switch numbers its own requests, so xids repeat across switches
        self.pending: dict[tuple[int, int], _Pending] = {}
        self.pending_lock = threading.Lock()
        self.bundle_ids = itertools.count(1)
        self.work: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self.threads.append(hub.spawn(self._worker))
        self.threads.append(hub.spawn(self._every_switch, LLDP_INTERVAL, self._send_lldp,
                                      "LLDP"))
        self.threads.append(hub.spawn(self._every_switch, AUDIT_INTERVAL,
                                      self._audit_switch, "spoof audit", AUDIT_SHARE))
        # times are taken when the work is queued, not when it runs: behind a long queue
        # (thousands of ports appearing) a link LLDP confirmed in time is not expired
        self.threads.append(hub.spawn(self._every, LLDP_INTERVAL, lambda: self.submit(
            self.service.housekeeping, time.monotonic())))
        self.threads.append(hub.spawn(self._every, ADVERT_INTERVAL, self._advertise))
        self.probed: dict[int, float] = {}  # dpid -> when its uplink last asked the gateway
        self.advertised: dict[str, Binding] = {}  # the bindings told their router already
        self.bridged_at: dict[str, int] = {}  # VM -> the host that announced it last
        self.announcer = bgp.Announcer(on_session=lambda peer, asn, up: self.submit(
            lambda: records.record(self.service.sessions, "bgp-session", peer=peer, asn=asn,
                                   state="established" if up else "down")),
            local=self.service.replica.bgp_address if self.service.replica else None)
        self.dns = dns_updates.Updater(self.service.sessions, lambda: self.service.state,
                                       self.service.metrics)
        if self.service.replica is not None:  # (before it starts: one member sends)
            self.dns.active = lambda: self.member is not None and self.member.sends_dns()
        self.dns.start()
        self.service.external_status = lambda: self.announcer.status() | {
            "dns": self.dns.status()}
        self.threads.append(hub.spawn(self._every, GATEWAY_PROBE_INTERVAL, self._probe_gateways))
        self.threads.append(hub.spawn(self._every, BGP_SYNC_INTERVAL, lambda: self.announcer.sync(
            self.service.state)))
        self.probes = lldp.ProbeBook()
        self.drop_counts: dict[tuple[int, int, int], int] = {}
        self.member: Member | None = None
        self.seen: Any = None  # links and switches, as last seen (a new member's view)
        self.seen_at = time.monotonic()
        self.member_stop = threading.Event()
        self._asked = -1  # the last version a reload was queued for
        if self.service.replica is not None:
            self._join(self.service.replica)

    # --- worker -----------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                LOG.exception("job failed")

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self.work.put(lambda: fn(*args))

    def close(self) -> None:
        """os-ken's teardown (AppManager.close): the worker, the DNS thread, the BGP
        session (a NOTIFICATION, rather than the peer noticing the process gone)."""
        self.work.put(None)
        self.member_stop.set()
        self.dns.close()
        self.announcer.close()

    # --- request/reply ----------------------------------------------------------------

    def _register(self, dp: Any, msg: Any) -> _Pending:
        """Give ``msg`` an xid and collect what the switch answers to it."""
        dp.set_xid(msg)
        return self._track(_Pending((dp.id, msg.xid)))

    def _reserve(self, dp: Any, count: int) -> _Pending:
        """``count`` consecutive xids of ``dp`` (restarting at 1 rather than wrapping),
        and one record for the errors the switch sends about any of them."""
        first = dp.xid + 1
        if first + count - 1 > ofp.MAX_XID:
            first = 1
        dp.xid = first + count - 1
        return self._track(_Pending((dp.id, first), count))

    def _track(self, p: _Pending) -> _Pending:
        with self.pending_lock:
            self.pending[p.key] = p
        return p

    def _forget(self, pendings: list[_Pending]) -> None:
        """Stop collecting for requests that get no reply of their own (errors only)."""
        with self.pending_lock:
            for p in pendings:
                self.pending.pop(p.key, None)

    def _send(self, dp: Any, msg: Any) -> _Pending:
        p = self._register(dp, msg)
        dp.send_msg(msg)
        return p

    def _wait(self, p: _Pending, what: str, timeout: float = REPLY_TIMEOUT) -> list[Any]:
        if not p.done.wait(timeout):
            self._forget([p])
            raise SwitchError(f"{what}: no reply in {timeout}s")
        return p.replies

    def _resolve(self, msg: Any, more: bool = False) -> None:
        with self.pending_lock:
            key = (msg.datapath.id, msg.xid)
            p = self.pending.get(key)
            if p is None:
                return
            p.replies.append(msg)
            if not more:
                self.pending.pop(key, None)
        if not more:
            p.done.set()

    def _request_multi(self, dp: Any, msg: Any, what: str) -> list[Any]:
        replies = self._wait(self._send(dp, msg), what)
        return [item for r in replies for item in r.body]

    # --- programming (called by the service, on the worker thread) ----------------------

    def program(self, dpid: int, changes: FlowDiff) -> None:
        """Commit all of ``changes`` in one atomic bundle, then wait for the barrier."""
        self.program_many([(dpid, changes)])

    def program_many(self, batch: list[tuple[int, FlowDiff]]) -> None:
        """One bundle per switch, all sent before any barrier is awaited (one round trip
        for the lot). Raises SwitchError naming every switch that failed."""
        sent = []
        failed = []
        for dpid, changes in batch:
            try:
                sent.append((dpid, *self._send_bundle(dpid, changes)))
            except SwitchError as e:
                failed.append((dpid, str(e)))
        for dpid, barrier, pendings in sent:
            try:
                self._finish_bundle(dpid, barrier, pendings)
            except SwitchError as e:
                failed.append((dpid, str(e)))
        if failed:
            err = SwitchError("; ".join(msg for _, msg in failed))
            err.failed = [d for d, _ in failed]  # type: ignore[attr-defined]
            raise err

    def _send_bundle(self, dpid: int, changes: FlowDiff) -> tuple[_Pending, _Pending]:
        """Write the flow-mods (cached bytes, see ofcodec) and a barrier; returns the
        barrier's record and the one that collects errors for every message sent."""
        dp = self.datapaths.get(dpid)
        if dp is None:
            raise SwitchError(f"switch {dpid:016x} is not connected")
        bodies = [ofcodec.add_body(f) for f in changes.add]
        bodies += [ofcodec.delete_body(f) for f in changes.delete]
        if len(bodies) == 1:  # one flow-mod is atomic by itself: no bundle round
            sent = self._reserve(dp, 1)
            dp.send(ofcodec.flow_mod(bodies[0], sent.key[1]))
        else:  # open, one add per flow-mod, commit
            sent = self._reserve(dp, len(bodies) + 2)
            bid = next(self.bundle_ids) & 0xFFFFFFFF
            for chunk in ofcodec.bundle(bodies, bid, ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED,
                                        sent.key[1]):
                dp.send(chunk)
        return self._send(dp, parser.OFPBarrierRequest(dp)), sent

    def _finish_bundle(self, dpid: int, barrier: _Pending, sent: _Pending) -> None:
        try:
            self._wait(barrier, f"barrier on {dpid:016x}")
        finally:
            self._forget([sent])
        if sent.errors:
            raise SwitchError(f"switch {dpid:016x} refused the bundle: {sent.errors[0]}")

    def read_flows(self, dpid: int, table: int | None = None, owner: Owner | None = None
                   ) -> list[tuple[Any, int, int]]:
        dp = self.datapaths.get(dpid)
        if dp is None:
            raise SwitchError(f"switch {dpid:016x} is not connected")
        req = parser.OFPFlowStatsRequest(
            dp, 0, ofp.OFPTT_ALL if table is None else table, ofp.OFPP_ANY, ofp.OFPG_ANY,
            0 if owner is None else cookie(owner), 0 if owner is None else 0xFF << 56)
        return [(ofcodec.from_stats(s), s.packet_count, s.byte_count)
                for s in self._request_multi(dp, req, "flow stats")]

    # --- cluster membership (vfence serve --cluster; controller/member.py) ----------------

    def _join(self, replica: Replica) -> None:
        """Become a member: probes signed with the shared key, the member's loop."""
        lldp.use_key(replica.lldp_key)
        self.probes = lldp.ProbeBook(shared=True)
        self.member = replica.member = Member(
            self.service.sessions, replica.name, replica.advertise, self,
            on_gain=lambda dpid, term: self.submit(self._take_over, dpid),
            on_lose=lambda dpid: self.submit(self.service.switches.ready.discard, dpid),
            on_version=self._follow_version)
        self.service.switches.fence = self.member.may_write
        self.member.settled = lambda: time.monotonic() - self.seen_at > LLDP_INTERVAL + 1
        if replica.presence is not None:
            self.member.present = replica.presence.held
        self.service.metrics.mastered.set_function(lambda: len(self.member.terms)
                                                   if self.member else 0)
        self.threads.append(hub.spawn(self.member.run, self.member_stop))

    def _mine(self, dpid: int) -> bool:
        """This process may write to the switch (always, unless a cluster member)."""
        return self.member is None or self.member.may_write(dpid)

    def connected(self) -> list[int]:
        """Switches read back and known to the service (the member's plan covers these)."""
        return [d for d in self.service.switches.connected() if d in self.datapaths]

    def become(self, dpid: int, master: bool, term: int) -> bool:
        """Role request with generation id ``term``; True once the switch accepted it."""
        dp = self.datapaths.get(dpid)
        if dp is None:
            return False
        role = ofp.OFPCR_ROLE_MASTER if master else ofp.OFPCR_ROLE_SLAVE
        msg = parser.OFPRoleRequest(dp, role, term)
        dp.set_xid(msg)
        p = self._track(_Pending((dpid, msg.xid), final_error=True))
        dp.send_msg(msg)
        try:
            replies = self._wait(p, f"role request to {dpid:016x}", ROLE_TIMEOUT)
        except SwitchError as e:
            LOG.warning("%s", e)
            return False
        if p.errors or not replies or replies[0].role != role:
            LOG.warning("switch %016x refused role %d in term %d: %s", dpid, role, term,
                        p.errors)
            return False
        return True

    def _set_async(self, dp: Any) -> None:
        """What the switch sends each role: a slave hears probes (punted by an action)
        and port changes; a master everything it hears today."""
        punts = 1 << ofp.OFPR_ACTION | 1 << ofp.OFPR_NO_MATCH | 1 << ofp.OFPR_INVALID_TTL
        ports = 1 << ofp.OFPPR_ADD | 1 << ofp.OFPPR_DELETE | 1 << ofp.OFPPR_MODIFY
        dp.send_msg(parser.OFPSetAsync(dp, [punts, 1 << ofp.OFPR_ACTION], [ports, ports],
                                       [0, 0]))

    def _take_over(self, dpid: int) -> None:
        """Master now (the switch accepted the role): read it back, then bring it to the
        compiled flows; nothing is sent for what it already holds."""
        dp = self.datapaths.get(dpid)
        if dp is None or not self._mine(dpid):
            return
        t0 = time.monotonic()
        self._ensure_meters(dp)
        stats = self._request_multi(dp, parser.OFPFlowStatsRequest(
            dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY), "flow stats")
        before = sum(self.service.switches.flow_mods.values())
        self.service.switches.attach(dpid, self._port_names(dpid),
                                     [ofcodec.from_stats(st) for st in stats])
        self.service.switch_ready(dpid)
        # what its last master may not have acted on (a port gone while it was dying)
        self.service.ports_changed(dpid, self._port_names(dpid))
        self.service.metrics.takeovers.inc()
        LOG.info("took over %016x: %d flows read back, %d flow-mods, %.0f ms", dpid,
                 len(stats), sum(self.service.switches.flow_mods.values()) - before,
                 (time.monotonic() - t0) * 1000)
        self._send_lldp(dp)

    def _follow_version(self, version: int) -> None:
        """Another member committed: reload and recompile (once per version seen)."""
        replica = self.service.replica
        if replica is not None and version != replica.version and version != self._asked:
            self._asked = version
            self.submit(self.service.housekeeping, time.monotonic())

    # --- connection lifecycle ---------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        dp = ev.datapath
        dpid = dp.id
        if dpid is None:
            return
        if ev.state == MAIN_DISPATCHER:
            self.datapaths[dpid] = dp
            self.submit(self._on_connect, dp)
        elif ev.state == DEAD_DISPATCHER and self.datapaths.get(dpid) is dp:
            del self.datapaths[dpid]
            if self.member is not None:
                self.member.forget(dpid)
            self.submit(self.service.switch_disconnected, dpid)

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev: Any) -> None:
        LOG.info("switch %016x connected", ev.msg.datapath_id)

    def _on_connect(self, dp: Any) -> None:
        """Read ports, meters and flows back; hand them to the service; start LLDP."""
        ports = self._request_multi(dp, parser.OFPPortDescStatsRequest(dp, 0), "port desc")
        self.ports[dp.id] = {
            p.port_no: (p.name.decode(errors="replace"), p.hw_addr) for p in ports
        }
        if self.member is not None:
            self._set_async(dp)  # a slave too hears link probes (and port changes)
        else:
            self._ensure_meters(dp)  # (a cluster member: when it becomes master)
        stats = self._request_multi(
            dp,
            parser.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY),
            "flow stats",
        )
        flows = [ofcodec.from_stats(s) for s in stats]
        name = self.ports[dp.id].get(ofp.OFPP_LOCAL, (f"{dp.id:016x}", ""))[0]
        self.service.switch_connected(dp.id, name, self._port_names(dp.id), flows)
        LOG.info("switch %s (%016x): %d flows read back", name, dp.id, len(flows))
        if self._mine(dp.id):
            self._send_lldp(dp)
            hub.spawn_after(SETTLE_SECONDS / 3, self._send_lldp, dp)
        hub.spawn_after(SETTLE_SECONDS, self.submit, self.service.switch_ready, dp.id)

    def _ensure_meters(self, dp: Any) -> None:
        """Create the controller rate-limit meters unless they already exist as wanted."""
        have = {
            m.meter_id: m
            for m in self._request_multi(dp, parser.OFPMeterConfigStatsRequest(dp, 0),
                                         "meter config")
        }
        for meter in METERS:  # declared in pipeline.py: id, rate (packets/s), burst
            cur = have.get(meter.id)
            if cur is not None and [b.rate for b in cur.bands] == [meter.rate_pps]:
                continue
            cmd = ofp.OFPMC_MODIFY if cur is not None else ofp.OFPMC_ADD
            band = parser.OFPMeterBandDrop(rate=meter.rate_pps, burst_size=meter.burst)
            msg = parser.OFPMeterMod(dp, cmd, ofp.OFPMF_PKTPS | ofp.OFPMF_BURST, meter.id,
                                     [band])
            p = self._send(dp, msg)
            try:
                self._wait(self._send(dp, parser.OFPBarrierRequest(dp)), "meter barrier")
            finally:
                self._forget([p])
            if p.errors:
                raise SwitchError(f"meter {meter.id} refused: {p.errors[0]}")

    def _port_names(self, dpid: int) -> dict[int, str]:
        return {
            no: name for no, (name, _) in self.ports.get(dpid, {}).items()
            if no <= ofp.OFPP_MAX
        }

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        msg, dp = ev.msg, ev.msg.datapath
        port = msg.desc
        table = self.ports.setdefault(dp.id, {})
        if msg.reason == ofp.OFPPR_DELETE or port.state & ofp.OFPPS_LINK_DOWN:
            table.pop(port.port_no, None)
        else:
            table[port.port_no] = (port.name.decode(errors="replace"), port.hw_addr)
            if self._mine(dp.id):
                hub.spawn(self._send_lldp, dp, [port.port_no])
        self.submit(self.service.ports_changed, dp.id, self._port_names(dp.id))

    # --- replies ----------------------------------------------------------------------

    @set_ev_cls(
        [ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPPortDescStatsReply,
         ofp_event.EventOFPMeterConfigStatsReply],
        [CONFIG_DISPATCHER, MAIN_DISPATCHER],
    )
    def _multipart(self, ev: Any) -> None:
        self._resolve(ev.msg, more=bool(ev.msg.flags & ofp.OFPMPF_REPLY_MORE))

    @set_ev_cls([ofp_event.EventOFPBarrierReply, ofp_event.EventOFPRoleReply], MAIN_DISPATCHER)
    def _barrier(self, ev: Any) -> None:
        self._resolve(ev.msg)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        LOG.error("switch %016x error type=%s code=%s", msg.datapath.id or 0, msg.type,
                  msg.code)
        if msg.type == ofp.OFPET_BAD_REQUEST and msg.code == ofp.OFPBRC_IS_SLAVE:
            self.service.metrics.role_errors.inc()  # a write this member should not make
        p = self._answered_by_error(msg.datapath.id, msg.xid)
        if p is not None:
            p.errors.append(f"type={msg.type} code={msg.code}")
            if p.final_error:
                with self.pending_lock:
                    self.pending.pop(p.key, None)
                p.done.set()

    def _answered_by_error(self, dpid: int, xid: int) -> _Pending | None:
        """The request an error is about: by its own xid, or one inside a bundle's run
        (few requests are ever pending at once, so a scan is cheap)."""
        with self.pending_lock:
            p = self.pending.get((dpid, xid))
            if p is None:
                p = next((q for q in self.pending.values() if q.holds(dpid, xid)), None)
        return p

    # --- packet-in --------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev: Any) -> None:
        self.service.counters["packet_in"] += 1
        self.service.metrics.packet_in.labels(
            (cookie_owner(ev.msg.cookie) or (Owner.BASE, 0))[0].name.lower()).inc()
        msg = ev.msg
        dp = msg.datapath
        in_port = msg.match.get("in_port")
        try:
            pkt = packet.Packet(msg.data)
        except Exception:  # os-ken raises what it likes on a malformed frame (metered)
            LOG.debug("unparsable frame from %016x port %s", dp.id, in_port)
            return
        eth = pkt.get_protocol(ethernet.ethernet)
        if eth is None or in_port is None:
            return
        if not self._mine(dp.id) and eth.ethertype != ETH_TYPE_LLDP:
            return  # a cluster member hears a switch it does not master for links only
        owner = cookie_owner(msg.cookie)
        if owner is not None and owner[0] == Owner.VM:
            state = self.service.state  # (swapped whole, never edited in place)
            asks = guest_config.kind(pkt)
            if asks is not None:  # metered by the dhcp meter, answered here
                reply = guest_config.answer(state, dp.id, in_port, asks, msg.data)
                if reply is not None:
                    self._packet_out(dp, in_port, reply)
            at = next((n for n, b in state.standby.items() if b.port == (dp.id, in_port)),
                      None)
            if asks is None or at is not None:
                # the first frame at a standby port (a DHCP request from one, too)
                self.submit(self.service.vm_seen, dp.id, in_port, eth.src)
            if at is not None and state.vms.get(at) and state.vms[at].mac == eth.src.lower():
                self.announcer.moved(state, at, dp.id)  # BGP follows the datapath now
                self._announce_bridged(state, [(at, state.standby[at])])  # and the switches
            return
        if owner is not None and owner[0] == Owner.UPLINK and msg.table_id == Table.CLASSIFY:
            # an external gateway's reply (metered): only the answer to our own recent
            # probe, from a unicast MAC, the frame's own
            seen = router_answers.gateway_answer(pkt)
            if seen is not None and self.probed.get(dp.id, 0.0) > \
                    time.monotonic() - PROBE_ANSWER_WINDOW:
                self.submit(self.service.gateway_seen, dp.id, in_port, *seen)
            return
        if owner is not None and owner[0] in (Owner.ROUTER, Owner.UPLINK) \
                and msg.table_id == Table.ROUTE:
            self._time_exceeded(dp, in_port, msg.data)  # an expiring TTL, metered
            return
        if owner is not None and owner[0] == Owner.RULE:  # deny-and-log sample
            proto, port = _l4(pkt)
            s = self.service
            self.submit(lambda: s.metrics.denied.labels(records.denied(  # the audit trail
                s.sessions, s.state, owner[1], s.switch_name(dp.id), eth.src, eth.dst,
                proto, port)).inc())
            return
        if eth.ethertype == ETH_TYPE_LLDP:
            src = lldp.parse(msg.data)
            if src is not None and self.probes.redeem(*src):
                link = Link(PortRef(src[0], src[1]), PortRef(dp.id, in_port))
                self.submit(self.service.link_seen, link, time.monotonic())
            else:
                LOG.warning("LLDP on %016x port %s: not a fresh probe of ours", dp.id, in_port)
            return
        if eth.ethertype == ETH_TYPE_VLAN:
            return  # a labelled frame from a fabric port the OVSDB has not marked yet: a
            # VM never sends tagged frames (port security drops them), so no binding
        self.submit(self.service.unbound_frame, dp.id, in_port, eth.src)

    def _packet_out(self, dp: Any, port: int, data: bytes) -> None:
        dp.send_msg(parser.OFPPacketOut(dp, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER,
                                        [parser.OFPActionOutput(port, 0)], data))

    def _advertise(self, state: NetworkState | None = None,
                   bindings: Iterable[tuple[str, Binding]] | None = None) -> None:
        """Unsolicited router advertisements, out of every bound port of a segment with
        subnet6 (or of those ``bindings``)."""
        for dpid, port_no, ad in dhcp.adverts(state or self.service.state, bindings):
            dp = self.datapaths.get(dpid)
            if dp is not None and self._mine(dpid):
                self._packet_out(dp, port_no, guest_config.advert(ad))

    def state_changed(self, state: NetworkState) -> None:
        """The service swapped its state (called under its lock: the work is queued)."""
        if (state.links, state.switches.keys()) != self.seen:  # (a new member's view)
            self.seen, self.seen_at = (state.links, state.switches.keys()), time.monotonic()
        self.dns.kick()  # its own thread: a dead DNS server holds nothing up
        self.submit(self._follow, state)

    def _follow(self, state: NetworkState) -> None:
        """A VM just bound in a bridged segment is announced on its uplink, BGP follows
        (moves, new VMs), and a VM just bound gets its segment's router advertisement
        (it solicited before it was bound)."""
        fresh = state.bindings.items() - self.advertised.items()  # (C speed)
        self.advertised = state.bindings
        self._announce_bridged(state, fresh)  # first: one packet-out, the switches wait
        try:
            self.announcer.sync(state)
        except Exception:
            LOG.exception("BGP announcements failed (retried in %s s)", BGP_SYNC_INTERVAL)
        self._advertise(state, fresh)

    def _announce_bridged(self, state: NetworkState,
                          bindings: Iterable[tuple[str, Binding]]) -> None:
        """A VM of a bridged segment that just arrived at a host: announced out of that
        host's uplink (once per arrival: the first frame at its standby port, or the
        binding, whichever comes first)."""
        for dpid, port, vm, vid in controller_bridged.announcements(state, bindings):
            dp = self.datapaths.get(dpid)
            if dp is not None and self._mine(dpid) and self.bridged_at.get(vm.name) != dpid:
                self.bridged_at[vm.name] = dpid
                self._packet_out(dp, port, bridged.announcement(vm, vid))

    def _probe_gateways(self) -> None:
        """ARP for each host's external gateway (and solicit its gateway6) out of its
        uplink (the answer, punted, gives the MAC the way out needs)."""
        state = self.service.state
        for dpid, dp in list(self.datapaths.items()):
            out = external.host_out(state, dpid)
            if out is not None and self._mine(dpid):
                self.probed[dpid] = time.monotonic()
                self._packet_out(dp, out.port, router_answers.arp_request(
                    out.mac, out.address, out.gateway))
                if out.address6 is not None and out.gateway6 is not None:
                    self._packet_out(dp, out.port, router_answers.neighbor_solicitation(
                        out.mac, out.address6, out.gateway6))

    def _time_exceeded(self, dp: Any, in_port: int, frame: bytes) -> None:
        """Answer in the router's name from the sender's gateway, out of its port. The
        state is read, not changed (it is swapped whole, never edited in place)."""
        v6 = frame[12:14] == b"\x86\xdd"
        gw = answering_gateway(self.service.state, dp.id, in_port, 6 if v6 else 4)
        answer = None if gw is None else (router_answers.time_exceeded6 if v6 else
                                          router_answers.time_exceeded)(frame, *gw)
        if answer is not None:
            self._packet_out(dp, in_port, answer)

    # --- LLDP -------------------------------------------------------------------------

    def probe_fabric(self, dpids: set[int]) -> None:
        """Fabric ports appeared on these switches: look for their links now."""
        for dpid in dpids:
            dp = self.datapaths.get(dpid)
            if dp is not None and self._mine(dpid):
                self._send_lldp(dp)

    def _send_lldp(self, dp: Any, only: list[int] | None = None) -> None:
        """Probe out of the switch's operator-marked fabric ports (never a VM's)."""
        fabric = self.service.state.fabric.get(dp.id, frozenset())
        for no, (_, mac) in list(self.ports.get(dp.id, {}).items()):
            if no not in fabric or (only is not None and no not in only):
                continue
            nonce = self.probes.issue(dp.id, no)
            out = parser.OFPPacketOut(
                dp, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER,
                [parser.OFPActionOutput(no)], lldp.probe(dp.id, no, mac, nonce),
            )
            dp.send_msg(out)

    def _every_switch(self, interval: float, fn: Callable[[Any], None], what: str,
                      share: float = 1.0) -> None:
        """Run ``fn`` on every connected switch every ``interval`` seconds, forever."""
        def each() -> None:
            for dp in [d for d in list(self.datapaths.values()) if self._mine(d.id)]:
                try:
                    fn(dp)
                except Exception:
                    LOG.exception("%s on %016x failed", what, dp.id)
        self._every(interval, each, share)

    @staticmethod
    def _every(interval: float, fn: Callable[[], object], share: float = 1.0) -> None:
        """Run ``fn`` every ``interval`` seconds, or less often when a round takes more
        than ``share`` of the time (a job whose work grows with the network, such as
        reading every VM's drop counters, never crowds out the changes)."""
        pause = interval
        while True:
            time.sleep(pause)
            t0 = time.monotonic()
            try:
                fn()
            except Exception:
                LOG.exception("periodic job failed")
            pause = max(interval, (time.monotonic() - t0) * (1 / share - 1))

    def _audit_switch(self, dp: Any) -> None:
        """Read the anti-spoofing drop counters (table 0, VM cookies); report growth."""
        vm_cookie = cookie(Owner.VM)
        req = parser.OFPFlowStatsRequest(dp, 0, 0, ofp.OFPP_ANY, ofp.OFPG_ANY, vm_cookie,
                                         0xFF << 56)
        grew = []
        for st in self._request_multi(dp, req, "spoof audit"):
            if st.instructions or st.priority not in SPOOF_DROP_KINDS:
                continue
            key = (dp.id, st.cookie, hash(str(st.match)))
            before = self.drop_counts.get(key, 0)
            self.drop_counts[key] = st.packet_count
            if st.packet_count > before:
                grew.append((st.cookie & 0xFFFF, st.priority, st.match.get("in_port", 0),
                             st.packet_count - before))
        if grew:
            s = self.service
            self.submit(lambda: records.spoofed(s.sessions, s.state, s.switch_name(dp.id),
                                                grew))
