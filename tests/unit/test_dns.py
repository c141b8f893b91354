"""controller/dns.py: which records the VMs ask for, in which zones, and the update
messages that make a server's records that (whole RRsets replaced, per zone)."""

from __future__ import annotations

import ipaddress

import pytest

from vfence.controller import dns, policy
from vfence.controller.model import VM, NetworkState
from vfence.controller.policy import PolicyError

DOC = {"segments": [{"name": "web", "subnet": "10.30.0.0/20", "subnet6": "fd00:30::/62"},
                    {"name": "flat"}],
       "dns": {"server": "192.0.2.53", "zone": "VMs.Example", "reverse": True}}


def _state(doc=DOC, vms=()) -> NetworkState:
    return NetworkState(policy=policy.parse(doc), vms={v.name: v for v in vms})


def _vm(name, *ips, segment="web"):
    return VM(1, name, "02:00:00:00:00:01", tuple(ips), 1, segment)


@pytest.mark.parametrize("addr, plen, zone", [
    ("10.30.1.5", 24, "1.30.10.in-addr.arpa."),
    ("10.30.1.5", 20, "30.10.in-addr.arpa."),  # rounded down to an octet
    ("10.30.1.5", 8, "10.in-addr.arpa."),
    ("10.30.1.5", 30, "1.30.10.in-addr.arpa."),
    ("10.30.1.5", None, "1.30.10.in-addr.arpa."),
    ("fd00:30::5", 64, "0.0.0.0.0.0.0.0.0.3.0.0.0.0.d.f.ip6.arpa."),
    ("fd00:30::5", 62, "0.0.0.0.0.0.0.0.3.0.0.0.0.d.f.ip6.arpa."),  # to a nibble
    ("fd00:30::5", 48, "0.0.0.0.0.3.0.0.0.0.d.f.ip6.arpa."),
])
def test_reverse_zone_is_the_prefix_rounded_down(addr, plen, zone):
    assert dns.reverse_zone(ipaddress.ip_address(addr), plen) == zone


def test_wanted_records_per_vm_and_family():
    state = _state(vms=[_vm("web-1", "10.30.1.5", "fd00:30::5", "fe80::5"),
                        _vm("flat-1", "172.16.0.9", segment="flat"),
                        _vm("a..b", "10.30.1.6")])  # no domain name: no records
    got = dns.wanted(state)
    assert dns.Rec("vms.example.", "web-1.vms.example.", "A", "10.30.1.5") in got
    assert dns.Rec("vms.example.", "web-1.vms.example.", "AAAA", "fd00:30::5") in got
    assert dns.Rec("30.10.in-addr.arpa.", "5.1.30.10.in-addr.arpa.", "PTR",
                   "web-1.vms.example.") in got
    assert dns.Rec("0.16.172.in-addr.arpa.", "9.0.16.172.in-addr.arpa.", "PTR",
                   "flat-1.vms.example.") in got  # no subnet: /24
    assert not any("fe80" in r.value or "a..b" in r.owner for r in got)
    # every name vfence keeps records at carries its marker: 6 records at 5 names
    assert {(r.zone, r.owner) for r in got if r.rtype == "TXT"} == {
        (r.zone, r.owner) for r in got} and all(r.value == dns.MARKER for r in got
                                                if r.rtype == "TXT")
    assert len(got) == 11


def test_an_address_two_vms_hold_has_no_ptr():
    """Unrouted segments may share an address: neither VM is its name (one PTR RRset
    with both would be a lie for each), while both keep their own A records."""
    got = dns.wanted(_state(vms=[_vm("x", "172.16.0.9", segment="flat"),
                                 VM(2, "y", "02:00:00:00:00:02", ("172.16.0.9",), 2, "flat")]))
    assert {(r.owner, r.rtype) for r in got} == {
        ("x.vms.example.", "A"), ("x.vms.example.", "TXT"),
        ("y.vms.example.", "A"), ("y.vms.example.", "TXT")}


def test_names_that_differ_in_case_only_leave_the_name_to_the_first():
    """DNS names are case-insensitive: Web-1 and web-1 would share one RRset; the VM
    registered first (the lower tag) keeps it, the twin gets none."""
    got = dns.wanted(_state(vms=[_vm("Web-1", "10.30.1.5"),
                                 VM(2, "web-1", "02:00:00:00:00:02", ("10.30.1.6",), 1, "web"),
                                 VM(3, "web-2", "02:00:00:00:00:03", ("10.30.1.7",), 1, "web")]))
    assert {(r.owner, r.value) for r in got if r.rtype == "A"} == {
        ("web-1.vms.example.", "10.30.1.5"), ("web-2.vms.example.", "10.30.1.7")}
    assert {r.owner for r in got if r.rtype == "PTR"} == {"5.1.30.10.in-addr.arpa.",
                                                          "7.1.30.10.in-addr.arpa."}


def test_a_name_is_claimed_only_if_not_in_use_or_already_vfences():
    """The first records at a name go with the prerequisite "name not in use" (RFC 2136),
    or, as a reclaim, "vfence's marker is there"; names vfence holds records at go
    without (an upgrade from records without markers keeps them)."""
    z = "vms.example."
    want = dns.wanted(_state(doc={**DOC, "dns": {**DOC["dns"], "reverse": False}},
                             vms=[_vm("new", "10.30.1.7")]))
    old = {dns.Rec(z, "old." + z, "A", "10.30.1.8")}
    want |= old | {dns.Rec(z, "old." + z, "TXT", dns.MARKER)}
    (change,) = dns.plan(want, old)
    assert change.claims == frozenset({"new." + z})
    cfg = _state().policy.dns
    text = dns.message(cfg, change, None).to_text()
    assert "new.vms.example. NONE ANY" in text  # the prerequisite: not in use
    assert f"old.vms.example. 30 IN TXT {dns.MARKER}" in text  # added, no prerequisite
    assert "old.vms.example. 0 NONE" not in text and "old.vms.example. 0 ANY" not in text
    again = dns.message(cfg, change, None, reclaim=True).to_text()
    assert f"new.vms.example. 0 IN TXT {dns.MARKER}" in again  # present, with its value
    assert dns.MARKER == '"heritage=vfence,vfence/owner=default"'
    assert "NONE ANY" not in again
    assert sorted(c.claims for c in change.owners()) == [frozenset(), frozenset({"new." + z})]


def test_no_reverse_no_ptr_and_no_dns_nothing():
    doc = DOC | {"dns": DOC["dns"] | {"reverse": False}}
    assert {r.rtype for r in dns.wanted(_state(doc, [_vm("w", "10.30.1.5")]))} == {"A", "TXT"}
    assert dns.wanted(_state({"segments": DOC["segments"]}, [_vm("w", "10.30.1.5")])) == set()


def test_plan_replaces_only_the_rrsets_that_differ():
    z = "vms.example."
    have = {dns.Rec(z, "a." + z, "A", "10.0.0.1"), dns.Rec(z, "b." + z, "A", "10.0.0.2"),
            dns.Rec(z, "c." + z, "A", "10.0.0.3")}
    want = {dns.Rec(z, "a." + z, "A", "10.0.0.1"), dns.Rec(z, "b." + z, "A", "10.0.0.9"),
            dns.Rec(z, "b." + z, "A", "10.0.0.8"), dns.Rec(z, "d." + z, "A", "10.0.0.4")}
    (change,) = dns.plan(want, have)
    assert change.zone == z and change.rrsets == (
        ("b." + z, "A", frozenset({"10.0.0.8", "10.0.0.9"}), frozenset({"10.0.0.2"})),
        ("c." + z, "A", frozenset(), frozenset({"10.0.0.3"})),  # deleted
        ("d." + z, "A", frozenset({"10.0.0.4"}), frozenset()))
    assert dns.applied(have, change) == want
    assert dns.plan(want, want) == [] and len(change.rrsets) == 3


def test_plan_batches_per_zone():
    want = {dns.Rec("z1.", f"h{i}.z1.", "A", f"10.0.0.{i}") for i in range(1, 6)} | {
        dns.Rec("z2.", "x.z2.", "A", "10.0.1.1")}
    changes = dns.plan(want, set(), batch=2)
    assert [(c.zone, len(c.rrsets)) for c in changes] == [("z1.", 2), ("z1.", 2),
                                                          ("z1.", 1), ("z2.", 1)]
    # an owner's RRsets are never split between messages (its claim covers them all)
    two = want | {dns.Rec("z1.", f"h{i}.z1.", "TXT", dns.MARKER) for i in range(1, 6)}
    changes = dns.plan(two, set(), batch=3)
    assert [len(c.rrsets) for c in changes] == [2, 2, 2, 2, 2, 1]
    assert all(len({o for o, *_ in c.rrsets}) == len(c.claims) for c in changes)


def test_message_deletes_only_vfences_old_values_and_adds_the_new_with_the_ttl():
    cfg = _state().policy.dns
    change = dns.Change("vms.example.", (
        ("a.vms.example.", "A", frozenset({"10.0.0.1", "10.0.0.2"}), frozenset({"10.0.0.2"})),
        ("b.vms.example.", "A", frozenset(), frozenset({"10.0.0.3"}))))
    text = dns.message(cfg, change, None).to_text()
    assert "a.vms.example. 30 IN A 10.0.0.1" in text and "10.0.0.2" not in text
    assert "b.vms.example. 0 NONE A 10.0.0.3" in text  # RFC 2136: delete this RR only
    assert "ANY" not in text  # never a whole RRset: what vfence did not put there stays


@pytest.mark.parametrize("dns_doc, field, words", [
    ({"server": "dns.example", "zone": "z."}, "dns.server", "not an IP address"),
    ({"server": "192.0.2.53", "zone": "a..b"}, "dns.zone", "not a domain name"),
    ({"server": "192.0.2.53", "zone": "z", "tsig": {"name": "k..", "secret_file": "/x"}},
     "dns.tsig.name", "not a domain name"),
    ({"server": "192.0.2.53", "zone": "z", "ttl": -1}, "dns.ttl", "minimum"),
    ({"server": "192.0.2.53", "zone": "z", "tsig": {"name": "k", "secret_file": "/x",
                                                    "algorithm": "rot13"}},
     "dns.tsig.algorithm", "rot13"),
    ({"zone": "z"}, "dns", "server"),
    ({"server": "192.0.2.53", "zone": "z", "owner": "a b"}, "dns.owner", "does not match"),
])
def test_a_bad_dns_section_names_the_field(dns_doc, field, words):
    with pytest.raises(PolicyError) as e:
        policy.parse({"dns": dns_doc})
    (err,) = e.value.errors
    assert err["field"] == field and words in err["reason"], err


def test_the_secret_file_takes_a_tsig_keygen_clause_or_the_secret_alone(tmp_path):
    from vfence.controller.model import Tsig
    clause = tmp_path / "k1"
    clause.write_text('key "vfence" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0";\n};\n')
    alone = tmp_path / "k2"
    alone.write_text("c2VjcmV0\n")
    assert dns.secret(Tsig("vfence.", secret_file=str(clause))) == "c2VjcmV0"
    assert dns.secret(Tsig("vfence.", secret_file=str(alone))) == "c2VjcmV0"


def test_found_by_review_dotted_names_fifos_and_md5(tmp_path):
    import os

    from vfence.controller.model import Tsig
    # a dotted VM name would put records under another name (a delegation's glue)
    assert dns.fqdn("ns.sub", "vms.example.") is None and dns.fqdn("web-1", "z.") == "web-1.z."
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block the controller: refused at once
    with pytest.raises(ValueError, match="not a regular file"):
        dns.secret(Tsig("k.", secret_file=str(fifo)))
    big = tmp_path / "big"
    big.write_text("A" * 5000)
    with pytest.raises(ValueError, match="larger than a key file"):
        dns.secret(Tsig("k.", secret_file=str(big)))
    with pytest.raises(PolicyError) as e:  # dnspython cannot sign with it
        policy.parse({"dns": {"server": "192.0.2.53", "zone": "z", "tsig": {
            "name": "k", "secret_file": "/x", "algorithm": "hmac-md5"}}})
    assert e.value.errors[0]["field"] == "dns.tsig.algorithm"
