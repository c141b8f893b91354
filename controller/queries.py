"""The read side: what the API shows, as plain data. In-memory state is copied under the
service's lock; database reads use their own session; switches are read outside the lock.
Nothing here changes anything."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest

from . import dhcp, external, registry, topology
from . import matrix as matrix_mod
from . import trace as trace_mod
from . import verify as verify_mod
from .errors import NotFound
from .flows import Flow, Owner, cookie_owner
from .pipeline import Table, table_name
from .store import models as m

if TYPE_CHECKING:
    from .model import NetworkState, SegmentSpec
    from .service import Service


def _location(row: m.VM) -> dict[str, Any] | None:
    loc = row.location
    if loc is None:
        return None
    return {"vm": row.name, "host": {"name": loc.switch_name, "dpid": loc.dpid},
            "port": {"number": loc.port_no, "name": loc.port_name}, "since": loc.since,
            "how": loc.how}


def _vm(row: m.VM) -> dict[str, Any]:
    return {"name": row.name, "mac": row.mac, "ips": [a.ip for a in row.ips],
            "segment": row.segment.name, "groups": sorted(g.name for g in row.groups),
            "location": _location(row)}


def _event(e: m.Event) -> dict[str, Any]:
    return {"id": e.id, "ts": e.ts, "type": e.type, "vm": e.vm, "host": e.host,
            "detail": e.detail}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


def owner_name(cookie: int) -> str:
    owner = cookie_owner(cookie)
    return f"{owner[0].name.lower()}:{owner[1]}" if owner else "foreign"


class Queries:
    def __init__(self, service: Service) -> None:
        self.service = service

    def health(self) -> dict[str, Any]:
        svc = self.service
        with svc.lock:
            out = {"status": "ok", "switches_connected": len(svc.switches.installed),
                   "switches_ready": len(svc.switches.ready),
                   "links": len(topology.graph(svc.state.links).edges),
                   "flow_mods_sent": sum(svc.switches.flow_mods.values()),
                   "packet_in": svc.counters["packet_in"],
                   "vms": len(svc.state.vms), "vms_bound": len(svc.state.bindings)}
        return out

    def hosts(self) -> list[dict[str, Any]]:
        sw = self.service.switches
        with self.service.lock:
            flows = {d: sw.installed.count(d) for d in sw.installed}
            mods = dict(sw.flow_mods)
            ports = {d: sorted(p.items()) for d, p in sw.ports.items()}
        with self.service.sessions() as s:
            rows = [(r.name, r.dpid, r.label) for r in registry.switches(s)]
        return [{"name": name, "dpid": dpid, "label": label,
                 "connected": int(dpid, 16) in flows, "flows": flows.get(int(dpid, 16), 0),
                 "flow_mods_sent": mods.get(int(dpid, 16), 0),
                 "ports": [{"number": n, "name": p} for n, p in ports.get(int(dpid, 16), [])]}
                for name, dpid, label in rows]

    def vms(self) -> list[dict[str, Any]]:
        with self.service.sessions() as s:
            return [_vm(r) for r in registry.list_vms(s)]

    def vm(self, name: str) -> dict[str, Any]:
        with self.service.sessions() as s:
            return _vm(registry.get_vm(s, name))

    def location(self, name: str) -> dict[str, Any]:
        with self.service.sessions() as s:
            loc = _location(registry.get_vm(s, name))
        if loc is None:
            raise NotFound(f"VM {name!r} is not attached to any switch port", "name")
        return loc

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every place the VM has been, oldest first (append-only)."""
        with self.service.sessions() as s:
            registry.get_vm(s, name)
            return [{"host": {"name": h.switch_name, "dpid": h.dpid},
                     "port": {"number": h.port_no, "name": h.port_name}, "since": h.since,
                     "until": h.until, "how": h.how, "convergence_ms": h.convergence_ms}
                    for h in registry.history(s, name)]

    def migrations(self, name: str) -> list[dict[str, Any]]:
        """Consecutive places in the VM's history, oldest first."""
        hist = self.history(name)
        return [{"source": a["host"], "target": b["host"], "at": b["since"], "how": b["how"],
                 "convergence_ms": b["convergence_ms"]}
                for a, b in zip(hist, hist[1:], strict=False)]

    def events(self, *, type_: str | None = None, vm: str | None = None,
               host: str | None = None, since: datetime | None = None, limit: int = 100,
               offset: int = 0, after: int | None = None) -> list[dict[str, Any]]:
        with self.service.sessions() as s:
            rows = registry.events(s, type_=type_, vm=vm, host=host, since=since, limit=limit,
                                   offset=offset, after=after)
            return [_event(e) for e in rows]

    def latest_events(self, types: tuple[str, ...], limit: int = 50) -> list[dict[str, Any]]:
        """The newest events of these types, newest first."""
        with self.service.sessions() as s:
            return [_event(e) for e in registry.latest_events(s, types, limit)]

    def matrix(self, only: list[str] | None = None, most: int = 24) -> dict[str, Any]:
        """What the policy allows from each group to each other. The groups: the
        policy's, then any other with VMs now (a group left behind by the API with no VM
        in it is nothing to judge); ``only`` picks some (unknown names are ignored); at
        most ``most`` are shown (``rows``: a row of :class:`matrix.Cell` per source
        group)."""
        with self.service.lock:
            state = self.service.state
        pol = state.policy
        members: dict[str, list[matrix_mod.Member]] = {}
        for vm in sorted(state.vms.values(), key=lambda v: v.name):
            for g in vm.groups:
                members.setdefault(g, []).append((vm.name, vm.mac, vm.ips))
        groups = list(dict.fromkeys([*pol.groups, *sorted(members)]))
        picked = set(only or ())
        shown = ([g for g in groups if g in picked] if picked else groups)[:most]
        return {"groups": groups, "shown": shown, "isolation": list(pol.isolation),
                "defaults": {"intra_group": pol.intra_group, "inter_group": pol.inter_group},
                "members": {g: [name for name, _, _ in members.get(g, [])] for g in groups},
                "elsewhere": matrix_mod.elsewhere(shown, members),
                "rows": matrix_mod.matrix(pol, shown, members)}

    def last_event_id(self) -> int:
        with self.service.sessions() as s:
            return registry.last_event_id(s)

    def segments(self) -> list[dict[str, Any]]:
        """Every segment, with the prefixes and gateways the policy document gives it
        and the router that joins it (if one does)."""
        policy = self.service.state.policy
        with self.service.sessions() as s:
            rows = registry.segments(s)
        out = []
        for r in rows:
            sp = policy.specs.get(r.name)
            out.append({"name": r.name, "subnet": r.subnet, "id": r.id, "tag": r.tag,
                        "subnet6": sp and sp.subnet6, "gateway": sp and sp.gateway,
                        "gateway6": sp and sp.gateway6, "router": policy.router_of.get(r.name),
                        "dhcp": _dhcp(sp)})
        return out

    def routers(self) -> list[dict[str, Any]]:
        """Each router, its MAC and the segments it joins with their gateways."""
        specs = self.service.state.policy.specs
        return [{"name": r.name, "mac": r.mac, "segments": [
            {"name": n, "subnet": specs[n].subnet, "gateway": specs[n].gateway,
             "subnet6": specs[n].subnet6, "gateway6": specs[n].gateway6}
            for n in r.segments]} for r in self.service.state.policy.routers]

    def external(self) -> list[dict[str, Any]]:
        """Each external network: its gateway (and the MAC resolved for it), the routers
        that reach it, the hosts' uplinks there, and its BGP session and routes."""
        st, status = self.service.state, self.service.external_status()
        sessions, routes = status.get("sessions", {}), status.get("routes", {})
        dpid_of = {sw.name: d for d, sw in st.switches.items()}
        ports = {u.host: (o.port if (o := external.host_out(st, dpid_of.get(u.host, -1)))
                          else None) for u in st.policy.uplinks}
        out = []
        for e in st.policy.externals:
            net = ipaddress.IPv4Network(e.subnet)
            bgp = None if e.bgp is None else {
                "local_asn": e.bgp.local_asn, "peer": e.bgp.peer, "peer_asn": e.bgp.peer_asn,
                "session": sessions.get(e.bgp.peer, {"state": "idle"}),
                "routes": [{"prefix": p, "next_hop": nh}
                           for p, nh in sorted(routes.get(e.name, {}).items())]}
            out.append({"name": e.name, "subnet": e.subnet, "gateway": e.gateway,
                        "subnet6": e.subnet6, "gateway6": e.gateway6,
                        "gateway_macs": {st.switch_name(d): m for d, m in
                                         sorted(st.gateway_macs.items())},
                        "gateway6_macs": {st.switch_name(d): m for d, m in
                                          sorted(st.gateway6_macs.items())},
                        "routers": [r.name for r in st.policy.routers if r.external == e.name],
                        "hosts": [{"name": u.host, "uplink": u.port, "address": u.address,
                                   "address6": u.address6, "ofport": ports[u.host]}
                                  for u in st.policy.uplinks
                                  if ipaddress.IPv4Address(u.address) in net],
                        "bgp": bgp})
        return out

    def dns(self) -> dict[str, Any]:
        """The DNS server kept current, and how far it is behind."""
        return dict(self.service.external_status().get("dns", {"configured": False}))

    def groups(self) -> list[dict[str, Any]]:
        with self.service.sessions() as s:
            return [{"name": r.name, "bit": r.bit} for r in registry.groups(s)]

    def rules(self) -> list[dict[str, Any]]:
        with self.service.lock:
            rules = self.service.state.policy.rules
        return [{"index": r.index, "priority": r.priority, "name": r.name, "from": str(r.src),
                 "to": str(r.dst), "protocol": r.protocol, "ports": [list(p) for p in r.ports],
                 "action": r.action} for r in rules]

    def policy(self) -> dict[str, Any]:
        with self.service.sessions() as s:
            return registry.current_policy(s) or {}

    def flows(self, host: str) -> list[dict[str, Any]]:
        """The flows installed on a switch, read from it now, with counters and owners."""
        dpid = self.service.state.find_switch(host)
        if dpid is None:
            raise NotFound(f"no switch named {host!r}", "host")
        state = self.service.state  # swapped whole, never changed in place
        return [{"table": f.table, "table_name": table_name(f.table), "priority": f.priority,
                 "band": band.name if (band := trace_mod.band_of(f)) else "",
                 "match": {k: _jsonable(v) for k, v in f.match},
                 "instructions": _jsonable(f.instructions), "cookie": f"{f.cookie:#018x}",
                 "owner": owner_name(f.cookie), "owned_by": trace_mod.owner_words(state, f),
                 "packets": packets, "bytes": nbytes}
                for f, packets, nbytes in sorted(self.service.switches.read_flows(dpid),
                                                 key=lambda x: x[0])]

    def metrics(self) -> bytes:
        """Prometheus exposition; rule counters are read from the switches now."""
        svc = self.service
        gauges = svc.metrics
        with svc.lock:  # (what a switch holds is immutable: counted outside the lock)
            installed = svc.switches.installed.snapshot()
            names = {d: svc.switch_name(d) for d in installed}
            rules = {r.priority: r.name for r in svc.state.policy.rules}
            logged = [r.name for r in svc.state.policy.rules if r.action == "deny-and-log"]
            routers = {n: name for name, n in svc.state.router_numbers.items()}
        for rule in logged:  # at 0 before the first sample, so its rate sees the first
            gauges.denied.labels(rule)
        gauges.switches.set(len(installed))
        for dpid in installed:
            for table, n in installed.count_by_table(dpid).items():
                gauges.flows.labels(names[dpid], str(table), table_name(table)).set(n)
        packets: dict[str, int] = {}
        nbytes: dict[str, int] = {}
        unused = dict.fromkeys(routers.values(), 0)
        for dpid in sorted(installed):
            try:  # only the flows counted: rules, isolation pairs, anti-spoofing drops
                read = [x for table, owner in ((None, Owner.RULE), (None, Owner.ISOLATION),
                                               (0, Owner.VM), (Table.ROUTE, Owner.ROUTER))
                        for x in svc.switches.read_flows(dpid, table, owner)]
            except Exception:  # a switch that just went away: skip it this scrape
                continue
            for f, p, b in read:
                owner = cookie_owner(f.cookie)
                if owner is None:
                    continue
                name = (rules.get(owner[1]) if owner[0] == Owner.RULE else
                        f"isolation[{owner[1]}]" if owner[0] == Owner.ISOLATION else
                        "anti-spoofing" if owner[0] == Owner.VM and not f.instructions
                        and f.table == 0 else None)
                if owner[0] == Owner.ROUTER and owner[1] in routers:
                    unused[routers[owner[1]]] += p
                elif name:
                    packets[name] = packets.get(name, 0) + p
                    nbytes[name] = nbytes.get(name, 0) + b
        for name in packets:
            gauges.rule_packets.labels(name).set(packets[name])
            gauges.rule_bytes.labels(name).set(nbytes[name])
        for name, n in unused.items():
            gauges.unused_drops.labels(name).set(n)
        status = svc.external_status()
        for peer, s in status.get("sessions", {}).items():
            gauges.bgp_up.labels(peer).set(s.get("state") == "established")
        for ext, routes in status.get("routes", {}).items():
            gauges.bgp_routes.labels(ext).set(len(routes))
        return generate_latest(gauges.registry)

    def _read(self) -> tuple[NetworkState, dict[int, list[Flow]], dict[int, set[int]]]:
        """The state, and the flows read from every switch now (and its ports)."""
        svc = self.service
        with svc.lock:
            state = svc.state  # swapped whole by the one path, never changed in place
            dpids = svc.switches.connected()
            ports = {d: set(svc.switches.ports.get(d, {})) for d in dpids}
        return state, {d: [f for f, _, _ in svc.switches.read_flows(d)] for d in dpids}, ports

    def drift(self) -> list[dict[str, Any]]:
        """Each connected switch against what this controller compiled for it: the flows
        it lacks and the flows it holds that nobody compiled (the datapath's own learned
        flows aside). Read from the switches now; a cluster member answers for all."""
        svc = self.service
        with svc.lock:
            desired, dpids = svc.desired, svc.switches.connected()
            names = {d: svc.switch_name(d) for d in dpids}
        out = []
        for dpid in dpids:
            have = {f for f, _, _ in svc.switches.read_flows(dpid)
                    if (cookie_owner(f.cookie) or (None,))[0] != Owner.LEARNED}
            want = desired[dpid] if desired is not None and dpid in desired else frozenset()
            missing, extra = sorted(want - have), sorted(have - want)
            out.append({"host": names[dpid], "dpid": registry.dpid_str(dpid),
                        "flows": len(want), "missing": len(missing), "extra": len(extra),
                        "examples": [f"missing {f!r}" for f in missing[:3]]
                        + [f"extra {f!r}" for f in extra[:3]]})
        return out

    def verify(self) -> list[verify_mod.Verdict]:
        """Prove each isolation pair over the flows read from every switch now."""
        return verify_mod.verify(*self._read())

    def trace(self, src: str, dst: str, protocol: str, port: int | None,
              established: bool) -> trace_mod.Result:
        """One packet through the flows read from every switch now."""
        with self.service.lock:  # a bad question is answered before any switch is read
            trace_mod.packet(self.service.state, src, dst, protocol, port)
        state, flows, _ = self._read()
        return trace_mod.trace(state, flows, src, dst, protocol, port, established)


def _dhcp(spec: SegmentSpec | None) -> dict[str, Any] | None:
    """What DHCP gives a segment's guests: DHCPv4 with an IPv4 subnet and gateway,
    DHCPv6 with an IPv6 subnet (and router advertisements, where a router joins it)."""
    if spec is None or not (dhcp.serves_v4(spec) or spec.subnet6):
        return None
    return {"dhcpv4": dhcp.serves_v4(spec), "dhcpv6": bool(spec.subnet6),
            "dns_servers": list(spec.dns_servers), "domain": spec.domain, "mtu": spec.mtu,
            "lease_time": spec.lease_time}
