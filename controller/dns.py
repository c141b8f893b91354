"""DNS follows the VMs: each VM's addresses as A/AAAA records at ``<name>.<zone>`` (and
PTR records when ``reverse``), kept current on an authoritative server by RFC 2136
dynamic updates signed with TSIG (dnspython builds them).

Level-based, like the switches: :func:`wanted` is what the VMs ask for, the database
holds what the server took (``dns_records``), and :func:`plan` is the difference as
update messages that delete vfence's old values and add its new ones (a lost answer is
mended by the next round: deleting what is gone or adding what is there changes
nothing). Records vfence did not create are never deleted. What the server has not
taken yet is the pending work: it survives restarts because both sides are in the
database.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from typing import Any, NamedTuple

import dns.exception
import dns.name
import dns.tsig
import dns.update

from .model import VM, Dns, NetworkState, Tsig

Err = Callable[[str, str], None]
MAX_KEY_FILE = 4096
BATCH = 100  # RRsets per update message: one message stays far below TCP's 64 KB


class Rec(NamedTuple):
    zone: str
    owner: str
    rtype: str
    value: str


class Change(NamedTuple):
    """One update message: in ``zone``, each (owner, type) RRset gets the values vfence
    wants and loses those it had put there and no longer wants. Records vfence did not
    put there are never touched. ``claims`` are the owners vfence has nothing at yet:
    the message adds to them only if the name is not in use on the server (or carries
    vfence's marker already, the answer to an earlier claim having been lost), so a VM
    named like a host the zone already has gets no records rather than joining the
    host's."""

    zone: str
    rrsets: tuple[tuple[str, str, frozenset[str], frozenset[str]], ...]  # owner, type,
    # wanted values, values vfence had there
    claims: frozenset[str] = frozenset()
    # owners whose last update's answer was lost: what the server holds there is not
    # known, so their RRsets are replaced whole, on the condition that vfence's marker is
    # there (the name is vfence's)
    replace: frozenset[str] = frozenset()

    def owners(self) -> list[Change]:
        """This change as one message per owner (to find which one the server refused)."""
        by: dict[str, list[tuple[str, str, frozenset[str], frozenset[str]]]] = {}
        for rr in self.rrsets:
            by.setdefault(rr[0], []).append(rr)
        return [Change(self.zone, tuple(rrs), self.claims & {o}, self.replace & {o})
                for o, rrs in by.items()]


def marker(cfg: Dns) -> str:
    """The TXT record at every name this vfence keeps records at: what it may change
    there (``dns.owner`` tells deployments sharing a zone apart, as external-dns's
    owner id does)."""
    return f'"heritage=vfence,vfence/owner={cfg.owner}"'


MARKER = marker(Dns("", ""))  # the default owner's
MANAGED = ("A", "AAAA", "PTR", "TXT")  # the types vfence keeps at its names


def _absolute(text: str) -> str:
    """A domain name as vfence stores it: absolute, lower case (raises on a bad name)."""
    return dns.name.from_text(text).to_text().lower()


def check(doc: dict[str, Any], err: Err) -> Dns | None:
    """The document's ``dns``, problems reported with their field (the secret file is
    read when the document is applied: :func:`secret`)."""
    d = doc.get("dns")
    if d is None:
        return None
    ok = True
    try:
        server = str(ipaddress.ip_address(d["server"]))
    except ValueError:
        err("dns.server", f"{d['server']!r} is not an IP address")
        server, ok = "", False
    zone = ""
    try:
        zone = _absolute(d["zone"])
    except dns.exception.DNSException as e:
        err("dns.zone", f"{d['zone']!r} is not a domain name: {e}")
        ok = False
    tsig = None
    if "tsig" in d:
        t = d["tsig"]
        try:
            tsig = Tsig(_absolute(t["name"]), t.get("algorithm", "hmac-sha256"),
                        t["secret_file"])
        except dns.exception.DNSException as e:
            err("dns.tsig.name", f"{t['name']!r} is not a domain name: {e}")
            ok = False
    if not ok:
        return None
    return Dns(server, zone, d.get("port", 53), d.get("reverse", False), d.get("ttl", 30),
               tsig, d.get("owner", "default"))


_CLAUSE = re.compile(r'secret\s+"([^"]+)"')


def secret(tsig: Tsig) -> str:
    """The base64 secret in ``tsig.secret_file``: the secret alone, or a key clause as
    ``tsig-keygen`` writes it. ValueError with the reason when it cannot be used."""
    try:  # never blocks (a FIFO) nor reads without end (/dev/zero): a small regular file
        fd = os.open(tsig.secret_file, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{tsig.secret_file} is not a regular file")
            text = os.read(fd, MAX_KEY_FILE + 1).decode("utf-8", "replace")
        finally:
            os.close(fd)
    except OSError as e:
        raise ValueError(f"cannot read {tsig.secret_file}: {e.strerror}") from None
    if len(text) > MAX_KEY_FILE:
        raise ValueError(f"{tsig.secret_file} is larger than a key file ({MAX_KEY_FILE} "
                         "bytes at most)")
    found = _CLAUSE.search(text)
    value = (found.group(1) if found else text).strip()
    try:
        if not base64.b64decode(value, validate=True):
            raise ValueError(f"{tsig.secret_file} holds an empty secret")
    except binascii.Error:
        raise ValueError(f"{tsig.secret_file}: the secret is not base64 (write the secret "
                         "alone, or the key clause tsig-keygen prints)") from None
    return value


def reverse_zone(addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 prefixlen: int | None) -> str:
    """The reverse zone holding ``addr``'s PTR: its segment's prefix rounded down to an
    octet (IPv4) or a nibble (IPv6); /24 or /64 when the segment has no prefix."""
    labels = addr.reverse_pointer.split(".")
    step, default = (8, 24) if addr.version == 4 else (4, 64)
    keep = max(1, (default if prefixlen is None else prefixlen) // step)
    return ".".join(labels[len(labels) - 2 - keep:]) + "."


def fqdn(vm: str, zone: str) -> str | None:
    """``vm``'s name in ``zone``, or None if the VM's name is not one domain name label
    (the policy allows names DNS does not, and a dotted name would put records under
    another name of the zone, a delegation's glue say: such VMs get no records)."""
    if "." in vm or len(vm) > 63:
        return None
    try:
        return _absolute(f"{vm}.{zone}")
    except dns.exception.DNSException:
        return None


def wanted(state: NetworkState) -> set[Rec]:
    """Every record the registered VMs ask for (link-local addresses have none, nor a VM
    whose name differs from an earlier one's in case only). Each VM's records are
    memoised: a round after one VM changed costs O(VMs) lookups."""
    cfg = state.policy.dns
    if cfg is None:
        return set()
    plens = {s.name: tuple(ipaddress.ip_network(p).prefixlen if p else None
                           for p in (s.subnet, s.subnet6))
             for s in state.policy.segment_specs}
    # names DNS cannot tell apart (Web-1, web-1): the first registered (lowest tag) keeps
    # the name, so a later twin cannot take another VM's records away
    first: dict[str, VM] = {}
    for vm in state.vms.values():
        had = first.setdefault(vm.name.lower(), vm)
        if vm.id < had.id:
            first[vm.name.lower()] = vm
    out: set[Rec] = set()
    for vm in first.values():
        out.update(_records(vm, cfg, plens.get(vm.segment, (None, None))))
    return _unshared(out)


def _unshared(recs: set[Rec]) -> set[Rec]:
    """Without the PTRs of an address two VMs hold (unrouted segments may share one):
    neither is its name."""
    seen: dict[str, str] = {}
    shared = set()
    for r in recs:
        if r.rtype == "PTR" and seen.setdefault(r.owner, r.value) != r.value:
            shared.add(r.owner)
    return {r for r in recs if r.owner not in shared} if shared else recs


@functools.lru_cache(maxsize=1 << 17)
def _records(vm: VM, cfg: Dns, plens: tuple[int | None, int | None]) -> tuple[Rec, ...]:
    name = fqdn(vm.name, cfg.zone)
    if name is None:
        return ()
    out = []
    for ip in vm.ips:
        addr = ipaddress.ip_address(ip)
        if addr.is_link_local:
            continue
        out.append(Rec(cfg.zone, name, "A" if addr.version == 4 else "AAAA", str(addr)))
        if cfg.reverse:
            zone, owner = reverse_zone(addr, plens[addr.version == 6]), addr.reverse_pointer
            out += [Rec(zone, owner + ".", "PTR", name),
                    Rec(zone, owner + ".", "TXT", marker(cfg))]
    if out:
        out.append(Rec(cfg.zone, name, "TXT", marker(cfg)))
    return tuple(out)


def plan(want: set[Rec], have: set[Rec], batch: int = BATCH,
         dirty: frozenset[tuple[str, str]] = frozenset()) -> list[Change]:
    """The update messages that make the server's records ``want`` when it holds
    ``have``: every (owner, type) whose values differ is replaced whole, per zone (a
    record that moved zone is deleted in the old one and added in the new), an owner's
    RRsets in one message, claiming the owners vfence holds nothing at. ``dirty``
    owners (zone, owner) are sent whatever they hold, every managed type, to be
    replaced whole. Only the records in the difference are looked at twice (the common
    case: one VM changed)."""
    touched = {(r.zone, r.owner, r.rtype) for r in want ^ have} | {
        (z, o, t) for z, o in dirty for t in MANAGED}
    if not touched:
        return []
    held = {(r.zone, r.owner) for r in have}  # names vfence has records at
    sets: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {
        k: (set(), set()) for k in touched}
    for i, recs in enumerate((want, have)):
        for r in recs:
            if (got := sets.get((r.zone, r.owner, r.rtype))) is not None:
                got[i].add(r.value)
    by_owner: dict[tuple[str, str], list[tuple[str, str, frozenset[str], frozenset[str]]]] = {}
    for (zone, owner, rtype), (w, h) in sorted(sets.items()):
        by_owner.setdefault((zone, owner), []).append((owner, rtype, frozenset(w),
                                                       frozenset(h)))
    out: list[Change] = []
    for (zone, owner), rrs in by_owner.items():  # an owner's RRsets go in one message
        if not out or out[-1].zone != zone or len(out[-1].rrsets) + len(rrs) > batch:
            out.append(Change(zone, ()))
        claim = frozenset() if (zone, owner) in held else frozenset({owner})
        again = frozenset({owner}) - claim if (zone, owner) in dirty else frozenset()
        last = out[-1]
        out[-1] = Change(zone, last.rrsets + tuple(rrs), last.claims | claim,
                         last.replace | again)
    return out


def message(cfg: Dns, change: Change, key: dns.tsig.Key | None, reclaim: bool = False
            ) -> dns.update.UpdateMessage:
    """The RFC 2136 update for ``change``: vfence's old values deleted one by one, the
    new ones added (one message: the server applies it whole or not at all). Each owner
    it claims must not be in use on the server (RFC 2136 prerequisite). With
    ``reclaim``, and for the owners to ``replace``, the name must carry vfence's marker
    instead (a claim or an update whose answer was lost): it is vfence's, so its RRsets
    are replaced whole (what the lost update did or did not do is then moot)."""
    update = dns.update.UpdateMessage(change.zone, keyring=key)
    whole = change.replace | (change.claims if reclaim else frozenset())
    for owner in sorted(whole):
        update.present(owner, "TXT", marker(cfg))
    for owner in sorted(change.claims - whole):
        update.absent(owner)
    for owner, rtype, want, had in change.rrsets:
        if owner in whole:
            update.delete(owner, rtype)
            had = frozenset()
        for value in sorted(had - want):
            update.delete(owner, rtype, value)
        for value in sorted(want - had):
            update.add(owner, cfg.ttl, rtype, value)
    return update


def key(cfg: Dns) -> dns.tsig.Key | None:
    """The TSIG key (reads the secret file: ValueError when it cannot be used)."""
    if cfg.tsig is None:
        return None
    return dns.tsig.Key(cfg.tsig.name, secret(cfg.tsig), cfg.tsig.algorithm)


def applied(have: set[Rec], change: Change) -> set[Rec]:
    """What the server holds after it took ``change``."""
    touched = {(change.zone, o, t) for o, t, _, _ in change.rrsets}
    kept = {r for r in have if (r.zone, r.owner, r.rtype) not in touched}
    return kept | {Rec(change.zone, o, t, v) for o, t, vs, _ in change.rrsets for v in vs}
