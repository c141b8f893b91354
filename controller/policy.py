"""Policy documents: load (YAML or JSON), validate, and turn into plain objects.

Structure is checked by the JSON Schema in ``schemas/policy.schema.json``; meaning
(unknown names, overlaps, isolation violations) by :func:`parse`. Every problem is
reported with its path in the document (``rules[2].ports``); a document with any
problem is rejected whole.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import addresses, dns, external
from .errors import Invalid, field_path
from .flows import MAX_RULES, MAX_SEGMENT_TAG, MAX_VM_TAG
from .model import ANY, Endpoint, Policy, Router, Rule, SegmentSpec, VMSpec, router_addresses
from .pipeline import MAX_ROUTERS, keep_rule_priorities

SCHEMA = ("vfence.schemas", "policy.schema.json")  # package data: found installed or not


class PolicyError(Invalid):
    """All problems of one document: ``errors`` is a list of {field, reason}."""

    def __init__(self, errors: list[dict[str, str]]):
        first = errors[0]
        super().__init__(first["reason"], first["field"])
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(f"{e['field']}: {e['reason']}" for e in self.errors)




@contextmanager
def fields_under(prefix: str) -> Iterator[None]:
    """A document's errors as the fields of one of its parts (``vms[3].ips[0]`` is the
    PATCH body's ``ips[0]`` when ``prefix`` is ``vms[3].``)."""
    try:
        yield
    except PolicyError as e:
        raise PolicyError([f | {"field": f["field"].removeprefix(prefix)}
                           for f in e.errors]) from None


# --- loading --------------------------------------------------------------------------------


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON document; syntax errors are PolicyErrors naming the line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PolicyError([{"field": "(file)", "reason": f"cannot read {p}: {e.strerror}"}]) \
            from None
    return load_text(text, json_only=p.suffix == ".json")


def load_text(text: str, json_only: bool = False) -> dict[str, Any]:
    try:
        doc = json.loads(text) if json_only else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise PolicyError([{"field": "(document)", "reason": f"not valid YAML/JSON: {e}"}]) \
            from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PolicyError([{"field": "(document)", "reason": "must be a mapping/object"}])
    return doc


@cache
def _validator() -> jsonschema.Draft202012Validator:
    """The policy JSON Schema, read through importlib.resources: it ships in the wheel."""
    text = resources.files(SCHEMA[0]).joinpath(SCHEMA[1]).read_text(encoding="utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


# --- parsing and meaning ------------------------------------------------------------------


# what flows can carry (controller/flows.py); a larger document is refused up front, before
# seconds go into checking the rest of it
SIZE_LIMITS = {"segments": (MAX_SEGMENT_TAG, "the segment tag is 16 bits"),
               "vms": (MAX_VM_TAG, "the VM tag is 16 bits"),
               "rules": (MAX_RULES, "each rule has its own priority band"),
               "routers": (MAX_ROUTERS, "each router has its own conntrack zone")}


def parse(doc: dict[str, Any]) -> Policy:
    """Validate ``doc`` completely and return the policy, or raise PolicyError."""
    errors = [
        {"field": key, "reason": f"at most {limit} {key} ({why}); the document has "
                                 f"{len(doc[key])}"}
        for key, (limit, why) in SIZE_LIMITS.items()
        if isinstance(doc.get(key), list) and len(doc[key]) > limit
    ]
    if errors:
        raise PolicyError(errors)
    errors = [
        {"field": field_path(e.absolute_path), "reason": e.message}
        for e in sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]
    if errors:
        raise PolicyError(errors)
    return keep_priorities(_Checker(doc).run(), {})  # fresh, spread: see keep_priorities


class _Checker:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.errors: list[dict[str, str]] = []
        self.prefixes: dict[str, list[addresses.IPNetwork]] = {}  # segment -> subnet(6)
        self.nets: dict[str, dict[str, addresses.IPNetwork | None]] = {}
        self.specs: dict[str, SegmentSpec] = {}
        self.joined: dict[str, str] = {}  # segment -> the router that joins it
        self.router_owner: dict[str, str] = {}  # router MAC -> router
        self.in_segment: dict[str, set[str]] = {}  # segment -> its VMs seen so far

    def err(self, path: str, reason: str) -> None:
        self.errors.append({"field": path, "reason": reason})

    def _unique(self, key: str) -> list[str]:
        seen: set[str] = set()
        names = []
        for i, item in enumerate(self.doc.get(key, [])):
            if item["name"] in seen:
                self.err(f"{key}[{i}].name", f"duplicate name {item['name']!r}")
            seen.add(item["name"])
            names.append(item["name"])
        return names

    def run(self) -> Policy:
        segments = self._segments()
        groups = self._unique("groups")
        routers = self._routers()
        externals, uplinks = external.check(self.doc, self.err, routers, self.nets)
        dns_config = dns.check(self.doc, self.err)
        vms = self._vms(segments, set(groups))
        self._router_macs(routers)
        isolation = self._isolation(set(groups), vms)
        rules = self._rules(set(groups), {v.name: v for v in vms}, isolation)
        if self.errors:
            raise PolicyError(self.errors)
        d = self.doc.get("defaults", {})
        return Policy(
            segments=tuple(segments.items()), groups=tuple(groups), vms=tuple(vms),
            rules=tuple(rules), isolation=tuple(isolation),
            intra_group=d.get("intra_group", "allow"), inter_group=d.get("inter_group", "deny"),
            routers=tuple(routers), segment_specs=tuple(self.specs.values()),
            externals=externals, uplinks=uplinks, dns=dns_config, document=self.doc,
        )

    def _segments(self) -> dict[str, str | None]:
        """Segment -> its subnet. The prefixes (subnet, subnet6) that its VMs' addresses
        must lie in go to ``self.prefixes``."""
        self._unique("segments")
        out: dict[str, str | None] = {}
        for i, s in enumerate(self.doc.get("segments", [])):
            where = f"segments[{i}]"
            nets: dict[str, addresses.IPNetwork | None] = {}
            for key, version in (("subnet", 4), ("subnet6", 6)):
                nets[key] = None
                if key in s:
                    try:
                        nets[key] = addresses.prefix(s[key], version)
                    except ValueError as e:
                        self.err(f"{where}.{key}", str(e))
            gws: dict[str, str | None] = {"gateway": None, "gateway6": None}
            for key, net_key in (("gateway", "subnet"), ("gateway6", "subnet6")):
                if key in s and (nets[net_key] is not None or net_key not in s):
                    try:
                        gws[key] = addresses.gateway(s[key], nets[net_key], net_key)
                    except ValueError as e:
                        self.err(f"{where}.{key}", str(e))
            self.nets[s["name"]] = nets
            v4, v6 = nets["subnet"], nets["subnet6"]
            self.specs[s["name"]] = SegmentSpec(
                s["name"], str(v4) if v4 else None, str(v6) if v6 else None,
                gws["gateway"], gws["gateway6"], self._resolvers(where, s),
                s.get("domain", "").rstrip(".").lower() or None, s.get("mtu"),
                s.get("lease_time", 3600), s.get("bridged", {}).get("uplink_vlan"))
            self._bridged(where, s, nets)
            out[s["name"]] = str(nets["subnet"]) if nets["subnet"] else None
            self.prefixes[s["name"]] = [n for n in nets.values() if n is not None]
        return out

    def _bridged(self, where: str, s: dict[str, Any], nets: dict[str, Any]) -> None:
        """A bridged segment: IPv4 (IPv6 neighbour discovery is not carried out yet), one
        VLAN of its own on the uplinks."""
        if "bridged" not in s:
            return
        vlan = s["bridged"]["uplink_vlan"]
        other = next((o.name for o in self.specs.values()
                      if o.uplink_vlan == vlan and o.name != s["name"]), None)
        if other is not None:
            self.err(f"{where}.bridged.uplink_vlan", f"VLAN {vlan} already carries segment "
                                                     f"{other!r}")
        if nets.get("subnet6") is not None:
            self.err(f"{where}.subnet6", "a bridged segment is IPv4 only for now (its "
                                         "neighbour discovery is not carried out)")

    def _resolvers(self, where: str, s: dict[str, Any]) -> tuple[str, ...]:
        """A segment's resolvers for its guests: IPv4 ones go out by DHCPv4, IPv6 ones
        by DHCPv6 and router advertisements."""
        out = []
        for j, text in enumerate(s.get("dns_servers", [])):
            try:
                out.append(str(ipaddress.ip_address(text)))
            except ValueError:
                self.err(f"{where}.dns_servers[{j}]", f"{text!r} is not an IP address")
        return tuple(out)

    def _vms(self, segments: dict[str, str | None], groups: set[str]) -> list[VMSpec]:
        self._unique("vms")
        macs: dict[str, str] = {}
        ips: dict[tuple, str] = {}  # (segment or router, address) -> VM
        first: dict[tuple, str] = {}  # (segment or router, address) -> its first field
        out = []
        for i, v in enumerate(self.doc.get("vms", [])):
            where = f"vms[{i}]"
            try:
                mac = addresses.vm_mac(v["mac"])
            except ValueError as e:
                mac = v["mac"].lower()
                self.err(f"{where}.mac", str(e))
            if mac in macs:
                self.err(f"{where}.mac", f"MAC {mac} is also VM {macs[mac]!r}'s")
            macs.setdefault(mac, v["name"])
            if v["segment"] not in segments:
                self.err(f"{where}.segment", f"unknown segment {v['segment']!r}")
            prefixes = self.prefixes.get(v["segment"], [])
            addrs = []
            for j, ip in enumerate(v.get("ips", [])):
                try:
                    addr = addresses.vm_address(ip, prefixes)
                except ValueError as e:
                    self.err(f"{where}.ips[{j}]", str(e))
                    continue
                spec = self.specs.get(v["segment"])
                if spec is not None and spec.uplink_vlan and addr == spec.gateway:
                    self.err(f"{where}.ips[{j}]", f"{addr} is the gateway of bridged segment "
                                                  f"{v['segment']!r} (a physical router)")
                # a router finds VMs by address alone: unique across all its segments
                router = self.joined.get(v["segment"])
                if spec is not None and router and addr in router_addresses(
                        spec, addresses.router_mac(router)):  # unrouted: a VM may route
                    self.err(f"{where}.ips[{j}]", f"{addr} is router {router!r}'s address in "
                                                  f"segment {v['segment']!r}")
                key = (("router", router) if router and not _link_local(addr)
                       else ("segment", v["segment"]), addr)
                if key in ips:
                    why = (f" (router {router!r} joins both segments)" if router
                           and ips[key] not in self.in_segment.get(v["segment"], ()) else "")
                    self.err(f"{where}.ips[{j}]", f"{addr} is also VM {ips[key]!r}'s{why}")
                    self.err(first[key], f"{addr} is also VM {v['name']!r}'s{why}")
                ips.setdefault(key, v["name"])
                first.setdefault(key, f"{where}.ips[{j}]")
                self.in_segment.setdefault(v["segment"], set()).add(v["name"])
                if router and spec is not None and not _link_local(addr) and (
                        spec.subnet if ":" not in addr else spec.subnet6) is None:
                    self.err(f"{where}.ips[{j}]", f"{addr}: segment {v['segment']!r} has no "
                             f"{'subnet6' if ':' in addr else 'subnet'}, and router "
                             f"{router!r} joins it")
                addrs.append(addr)
            for j, g in enumerate(v.get("groups", [])):
                if g not in groups:
                    self.err(f"{where}.groups[{j}]", f"unknown group {g!r}")
            out.append(VMSpec(v["name"], mac, tuple(addrs), v["segment"],
                              tuple(v.get("groups", []))))
        return out

    def _routers(self) -> list[Router]:
        """Each router joins segments that exist, have a gateway for each prefix they
        have, are joined by no other router, and whose prefixes do not overlap."""
        self._unique("routers")
        joined: dict[str, str] = {}
        out = []
        for i, r in enumerate(self.doc.get("routers", [])):
            mine: list[tuple[str, addresses.IPNetwork]] = []
            for j, name in enumerate(r["segments"]):
                where = f"routers[{i}].segments[{j}]"
                spec, nets = self.specs.get(name), self.nets.get(name, {})
                if spec is None:
                    self.err(where, f"unknown segment {name!r}")
                    continue
                if name in joined:
                    self.err(where, f"segment {name!r} is already joined by router "
                                    f"{joined[name]!r} (a segment has one gateway)")
                joined.setdefault(name, r["name"])
                if spec.uplink_vlan is not None:
                    self.err(where, f"segment {name!r} is bridged: its gateway is outside, "
                                    "on its uplink VLAN (no router may join it)")
                if spec.subnet is None and spec.subnet6 is None:
                    self.err(where, f"segment {name!r} has no subnet: nothing to route")
                for net_key, gw in (("subnet", spec.gateway), ("subnet6", spec.gateway6)):
                    net = nets.get(net_key)
                    if net is None:
                        continue
                    if gw is None:
                        self.err(where, f"segment {name!r} has a {net_key} but no "
                                        f"{'gateway' if net_key == 'subnet' else 'gateway6'}")
                    clash = next((o for o, n in mine if n.version == net.version
                                  and n.overlaps(net)), None)  # type: ignore[arg-type]
                    if clash is not None:
                        self.err(where, f"{net_key} {net} of {name!r} overlaps segment "
                                        f"{clash!r}'s, which this router also joins")
                    mine.append((name, net))
            out.append(Router(r["name"], tuple(r["segments"]), addresses.router_mac(r["name"]),
                              r.get("external")))
        self.joined = joined
        self.router_owner = {r.mac: r.name for r in out}
        return out

    def _router_macs(self, routers: list[Router]) -> None:
        """No VM may use a router's MAC (it would receive what is meant for the gateway)."""
        owner = {r.mac: r.name for r in routers}
        for i, v in enumerate(self.doc.get("vms", [])):
            if str(v["mac"]).lower() in owner:
                self.err(f"vms[{i}].mac", f"{v['mac']} is router "
                                          f"{owner[str(v['mac']).lower()]!r}'s MAC")

    def _isolation(self, groups: set[str], vms: list[VMSpec]) -> list[tuple[str, str]]:
        out = []
        for i, (a, b) in enumerate(self.doc.get("isolation", [])):
            for j, g in enumerate((a, b)):
                if g not in groups:
                    self.err(f"isolation[{i}][{j}]", f"unknown group {g!r}")
            if a == b:
                self.err(f"isolation[{i}]", f"a group cannot be isolated from itself ({a!r})")
            out.append((a, b))
        for i, v in enumerate(vms):
            for a, b in out:
                if a in v.groups and b in v.groups:
                    self.err(f"vms[{i}].groups", f"VM is in both {a!r} and {b!r}, which are "
                             "isolated from each other")
        return out

    def _endpoint(self, path: str, text: str, groups: set[str], vms: dict[str, VMSpec]
                  ) -> Endpoint:
        if text == "any":
            return ANY
        if text in groups and text in vms:
            self.err(path, f"{text!r} names both a group and a VM")
        if text in groups:
            return Endpoint("group", text)
        if text in vms:
            return Endpoint("vm", text)
        if addresses.is_mac(text):
            if text.lower() in self.router_owner:
                self.err(path, f"{text} is router {self.router_owner[text.lower()]!r}'s MAC: "
                               "routing rewrites it, name the VMs, groups or CIDRs behind it")
            return Endpoint("mac", text.lower())
        if "/" in text or text.replace(".", "").isdigit() or ":" in text:
            try:
                return Endpoint("cidr", str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                self.err(path, f"{text!r} is not a valid CIDR")
                return ANY
        self.err(path, f"unknown group or VM {text!r}")
        return ANY

    def _rules(self, groups: set[str], vms: dict[str, VMSpec],
               isolation: list[tuple[str, str]]) -> list[Rule]:
        self._unique("rules")
        out = []
        for i, r in enumerate(self.doc.get("rules", [])):
            where = f"rules[{i}]"
            src = self._endpoint(f"{where}.from", r["from"], groups, vms)
            dst = self._endpoint(f"{where}.to", r["to"], groups, vms)
            proto = r.get("protocol", "any")
            ports = self._ports(f"{where}.ports", r.get("ports"))
            if ports and proto not in ("tcp", "udp"):
                self.err(f"{where}.ports", "ports need protocol tcp or udp")
            if ("icmp_type" in r or "icmp_code" in r) and proto not in ("icmp", "icmpv6"):
                self.err(f"{where}.icmp_type", "icmp_type/icmp_code need protocol icmp or icmpv6")
            if "ethertype" in r and proto != "any":
                self.err(f"{where}.ethertype", "ethertype goes with protocol 'any' only")
            fams = {ipaddress.ip_network(e.value).version for e in (src, dst) if e.kind == "cidr"}
            if len(fams) > 1:
                self.err(f"{where}.to", "from and to mix IPv4 and IPv6")
            if r["action"] == "allow":
                self._check_isolation(where, src, dst, vms, isolation)
            out.append(Rule(i, r["name"], src, dst, r["action"], proto, ports,
                            r.get("icmp_type"), r.get("icmp_code"), r.get("ethertype")))
        return out

    def _check_isolation(self, where: str, src: Endpoint, dst: Endpoint,
                         vms: dict[str, VMSpec], isolation: list[tuple[str, str]]) -> None:
        def touched(e: Endpoint) -> set[str]:
            if e.kind == "group":
                return {e.value}
            if e.kind == "vm":
                return set(vms[e.value].groups)
            return set()

        s, d = touched(src), touched(dst)
        for k, (a, b) in enumerate(isolation):
            if (a in s and b in d) or (b in s and a in d):
                self.err(where, f"rule {where} allows traffic between {a!r} and {b!r}, "
                         f"which isolation[{k}] forbids")

    def _ports(self, path: str, spec: Any) -> tuple[tuple[int, int], ...]:
        if spec is None:
            return ()
        items = spec if isinstance(spec, list) else [spec]
        parts: list[str] = []
        for item in items:
            parts.extend(str(item).split(","))
        out = []
        for part in parts:
            lo_s, _, hi_s = part.strip().partition("-")
            lo, hi = int(lo_s), int(hi_s or lo_s)
            if not 0 <= lo <= hi <= 65535:
                self.err(path, f"{part.strip()!r} is not a port range within 0-65535")
                continue
            out.append((lo, hi))
        return tuple(sorted(set(out)))


def keep_priorities(policy: Policy, previous: Mapping[str, int]) -> Policy:
    """``policy`` with each rule keeping its ``previous`` priority where the order
    allows (new and moved rules go between), so an edit rewrites only what it changes."""
    names = [r.name for r in policy.rules]
    prios = keep_rule_priorities(names, dict(previous))
    return dataclasses.replace(policy, rules=tuple(
        dataclasses.replace(r, slot=p) for r, p in zip(policy.rules, prios, strict=True)))


def port_masks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Cover [lo, hi] with the fewest (value, mask) pairs (16-bit ports)."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def _link_local(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_link_local
