"""The REST API's request and response bodies (pydantic), and its error document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from .addresses import vm_address, vm_mac
from .pipeline import GROUP_SLOTS
from .trace import Verdict
from .verify import Status

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME, description="letters, digits, '_', '.', '-'")]
PROBLEM = "application/problem+json"
OPEN_PATHS = {"/v1/health"}  # for load balancers and probes; says nothing sensitive


VMAddress = Annotated[str, AfterValidator(vm_address), Field(
    description="unicast IPv4/IPv6 address without a zone index; not loopback, multicast, "
                "unspecified or broadcast", json_schema_extra={"anyOf": [
                    {"format": "ipv4"}, {"format": "ipv6"}]})]


def _unique_addresses(cls: Any, v: list[str] | None) -> list[str] | None:
    if v is not None and len(set(v)) != len(v):
        raise ValueError("addresses repeat")
    return v


class VMIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    mac: str = Field(description="unicast MAC, e.g. 00:00:00:00:01:01",
                     pattern=r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
    ips: list[VMAddress] = Field(default_factory=list, max_length=64,
                                 json_schema_extra={"uniqueItems": True})
    segment: Name
    groups: list[Name] = Field(default_factory=list, max_length=GROUP_SLOTS,
                               json_schema_extra={"uniqueItems": True},
                               description=f"at most {GROUP_SLOTS} groups (register slots)")

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        return vm_mac(v)

    _ips = field_validator("ips")(_unique_addresses)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("groups repeat")
        return v


class VMPatch(BaseModel):
    """A VM re-addressed, in its segment or moved to another (a recovery site): its
    flows, DNS records and BGP route follow. Fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    ips: list[VMAddress] | None = Field(None, max_length=64,
                                        json_schema_extra={"uniqueItems": True})
    segment: Name | None = None

    _ips = field_validator("ips")(_unique_addresses)

    @model_validator(mode="after")
    def _something(self) -> VMPatch:
        if self.ips is None and self.segment is None:
            raise ValueError("give ips, segment or both")
        return self


class Host(BaseModel):
    name: str
    dpid: str


class Port(BaseModel):
    number: int
    name: str


class LocationOut(BaseModel):
    vm: str
    host: Host
    port: Port
    since: datetime
    how: str


class VMOut(BaseModel):
    name: str
    mac: str
    ips: list[str]
    segment: str
    groups: list[str]
    location: LocationOut | None = None


class TraceIn(BaseModel):
    """One packet to walk through the switches' flows: from a VM (its name or one of its
    addresses) to a VM or an address."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=64, description="a VM: name or address")
    destination: str = Field(min_length=1, max_length=64,
                             description="a VM (name or address), or any address")
    protocol: Literal["tcp", "udp", "icmp"] = "tcp"
    port: int | None = Field(None, ge=1, le=65535, description="tcp/udp: the destination port")
    established: bool = Field(False, description="walk it as part of an established "
                              "connection (default: its first packet)")


class HopOut(BaseModel):
    switch: str
    table: int
    table_name: str
    priority: int
    owner: str = Field(description="in words: the rule, isolation pair, VM, router ... or "
                       "'a flow vfence did not install'")
    band: str = Field(description="the pipeline's name for that priority (docs/pipeline.md)")
    job: str
    cookie: str
    match: dict[str, Any]


class TraceOut(BaseModel):
    verdict: Verdict
    reason: str = Field(description="for a drop: the flow that dropped it, in words")
    reached: list[str] = Field(description="the VMs (or switch ports) it came out at")
    packet: dict[str, Any] = Field(description="the packet as the source sends it")
    hops: list[HopOut] = Field(description="every flow it met, switch by switch")


class VerdictOut(BaseModel):
    pair: list[str]
    status: Status = Field(
        description="isolated: proved, no header from one group reaches the other; broken: "
                    "one does (see witness); unknown: neither could be proved (see reason)")
    reason: str | None = Field(description="why the status is unknown: the step limit, or "
                               "an instruction/action it does not model and the flow")
    isolated: bool = Field(description="status == isolated (kept for older clients)")
    complete: bool = Field(description="false if the search hit its size limit")
    witness: list[str] = Field(description="flows a leaking packet goes through")
    explored: int


class FlowOut(BaseModel):
    table: int
    table_name: str = Field(description="the table's job in the pipeline (docs/pipeline.md)")
    priority: int
    band: str = Field(description="the band of the table that priority is in (docs/pipeline.md); "
                      "empty for a flow vfence did not install")
    match: dict[str, Any]
    instructions: Any
    cookie: str
    owned_by: str = Field(description="the owner in words: 'rule web-to-api (allow)', "
                          "'VM api-1', 'a flow vfence did not install (cookie 0x0)'")
    owner: str = Field(description="base, vm:<tag>, segment:<tag>, fabric, rule:<priority>, "
                       "policy, isolation:<index>, learned:<tag> (installed by the datapath "
                       "when a migrating VM's first frame came from its new port), or foreign "
                       "(not written by vfence)")
    packets: int
    bytes: int


class HistoryOut(BaseModel):
    host: Host
    port: Port
    since: datetime
    until: datetime | None
    how: str
    convergence_ms: float | None


class MigrationOut(BaseModel):
    source: Host
    target: Host
    at: datetime
    how: str
    convergence_ms: float | None


class MigrationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_host: str = Field(min_length=1, max_length=64,
                             description="bridge name or 16-hex-digit dpid")


class EventOut(BaseModel):
    id: int
    ts: datetime
    type: str
    vm: str | None
    host: str | None
    detail: dict[str, Any]


class HostChange(BaseModel):
    flows: int = Field(description="flows the host holds after the change")
    add: int = Field(description="flows added or replaced")
    delete: int


class PolicyReport(BaseModel):
    dry_run: bool
    vms: dict[str, list[str]] = Field(description="VM names added, removed, changed")
    rules: list[str]
    hosts: dict[str, HostChange]


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list)


class ClusterMemberOut(BaseModel):
    name: str
    advertise: str = Field(description="the URL other members and clients reach it at")
    live: bool = Field(description="heartbeat recent and (PostgreSQL) its process connected")
    heartbeat_age_s: float
    masters: list[str] = Field(description="switches (dpid) it holds a valid lease on")


class ClusterSwitchOut(BaseModel):
    dpid: str
    master: str = Field(description="the lease's holder (valid says whether it still is)")
    term: int = Field(description="grows by one with every new master; the OpenFlow role "
                      "request's generation id")
    valid: bool
    expires_in_s: float


class ClusterOut(BaseModel):
    me: str | None = Field(description="the member that answered")
    version: int = Field(description="the shared state's version (one more per change)")
    my_version: int = Field(description="the version this member's copy is at")
    members: list[ClusterMemberOut]
    switches: list[ClusterSwitchOut]
    dns_updates_by: str | None = Field(description="the member that sends the DNS "
                                       "updates now (it holds the cluster's DNS lease)")


class ClusterApplyIn(BaseModel):
    """Another member's change to a switch this member masters (members only)."""

    model_config = ConfigDict(extra="forbid")
    dpid: str = Field(pattern=r"^[0-9a-f]{16}$")
    term: int = Field(ge=1, description="the term the sender read this member's lease in")
    flows: list[list[Any]] = Field(max_length=1_000_000,
                                   description="the switch's complete new flow set")


class ClusterApplyOut(BaseModel):
    flow_mods: int


class DriftOut(BaseModel):
    host: str
    dpid: str
    flows: int = Field(description="flows compiled for the switch")
    missing: int = Field(description="compiled flows the switch does not hold")
    extra: int = Field(description="flows the switch holds that nobody compiled (learned "
                       "flows of a migrating VM aside)")
    examples: list[str] = Field(description="up to three of each")
