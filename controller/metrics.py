"""Prometheus metrics (served at /metrics). One registry per service, so tests and
benchmarks that build several services in one process do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.switches = Gauge("vfence_switches_connected", "switches connected", registry=r)
        self.flows = Gauge("vfence_flows", "flows installed", ["switch", "table", "table_name"],
                           registry=r)
        self.flow_mods = Counter("vfence_flow_mods_total", "flow-mods sent (in bundles)",
                                 ["switch"], registry=r)
        self.bundles = Counter("vfence_bundles_total", "bundles committed", ["switch"],
                               registry=r)
        self.packet_in = Counter("vfence_packet_in_total", "packet-ins received", ["reason"],
                                 registry=r)
        self.moves = Counter("vfence_vm_moves_total", "VM migrations followed", registry=r)
        self.convergence = Histogram(
            "vfence_convergence_seconds", "detection of a move to the last barrier",
            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5), registry=r)
        self.api_latency = Histogram("vfence_api_request_seconds", "REST latency",
                                     ["method", "route", "status"], registry=r)
        self.rule_packets = Gauge("vfence_rule_packets", "packets matched by a policy rule "
                                  "(denies included), summed over switches", ["rule"],
                                  registry=r)
        self.bgp_up = Gauge("vfence_bgp_session_up", "1 while the BGP session with the peer "
                            "is established", ["peer"], registry=r)
        self.bgp_routes = Gauge("vfence_bgp_routes", "VM host routes announced to an external "
                                "network", ["external"], registry=r)
        self.dns_pending = Gauge("vfence_dns_pending", "DNS RRsets the server has not taken "
                                 "yet (retried with backoff)", registry=r)
        self.dns_updates = Counter("vfence_dns_updates_total", "RFC 2136 updates sent, by the "
                                   "server's answer", ["rcode"], registry=r)
        self.takeovers = Counter("vfence_cluster_takeovers_total", "switches this member "
                                 "became master of (read back and diffed)", registry=r)
        self.role_errors = Counter("vfence_cluster_role_errors_total", "writes a switch "
                                   "refused because this member is a slave there", registry=r)
        self.mastered = Gauge("vfence_cluster_switches_mastered", "switches this member "
                              "masters now", registry=r)
        self.unused_drops = Gauge("vfence_routed_unused_drops", "packets a router dropped "
                                  "for addresses of its subnets that no VM holds, summed "
                                  "over switches", ["router"], registry=r)
        self.denied = Counter("vfence_denied_samples_total", "samples of packets a "
                              "deny-and-log rule dropped (each also an audit event)",
                              ["rule"], registry=r)
        self.rule_bytes = Gauge("vfence_rule_bytes", "bytes matched by a policy rule",
                                ["rule"], registry=r)
