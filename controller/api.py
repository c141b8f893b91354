"""REST API (``/v1``, JSON). Handlers validate, translate and call the service.

Errors are RFC 9457 problem+json documents whose ``errors`` list names each failing
field (``body.mac``, ``path.name``) and the reason.
"""

from __future__ import annotations

import re
from datetime import datetime
from ipaddress import ip_address
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import registry, topology
from .errors import NotFound, VfenceError
from .service import Service
from .store import models as db

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
Name = Annotated[str, Field(pattern=NAME, description="letters, digits, '_', '.', '-'")]
PROBLEM = "application/problem+json"


class VMIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    mac: str = Field(description="unicast MAC, e.g. 00:00:00:00:01:01")
    ips: list[str] = Field(default_factory=list, max_length=64)
    segment: Name
    groups: list[Name] = Field(default_factory=list, max_length=64)

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        v = v.strip().lower().replace("-", ":")
        if not MAC_RE.match(v):
            raise ValueError("not a MAC address (six colon-separated hex octets)")
        if int(v[:2], 16) & 1:
            raise ValueError("multicast/broadcast MAC cannot be a VM's address")
        if v == "00:00:00:00:00:00":
            raise ValueError("all-zero MAC cannot be a VM's address")
        return v

    @field_validator("ips")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        out = []
        for ip in v:
            try:
                addr = ip_address(ip)
            except ValueError:
                raise ValueError(f"{ip!r} is not an IPv4 or IPv6 address") from None
            if addr.is_multicast or addr.is_unspecified:
                raise ValueError(f"{ip} cannot be a VM's address")
            out.append(str(addr))
        if len(set(out)) != len(out):
            raise ValueError("addresses repeat")
        return out

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("groups repeat")
        return v


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


class HistoryOut(BaseModel):
    host: Host
    port: Port
    since: datetime
    until: datetime | None
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


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]]) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=errors)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM)


def _location(row: db.VM) -> LocationOut | None:
    loc = row.location
    if loc is None:
        return None
    return LocationOut(
        vm=row.name, host=Host(name=loc.switch_name, dpid=loc.dpid),
        port=Port(number=loc.port_no, name=loc.port_name), since=loc.since, how=loc.how,
    )


def _vm_out(row: db.VM) -> VMOut:
    return VMOut(
        name=row.name, mac=row.mac, ips=[a.ip for a in row.ips], segment=row.segment.name,
        groups=sorted(g.name for g in row.groups), location=_location(row),
    )


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="vfence", version="0.1.0", description=__doc__)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": Problem} for code in (404, 409, 422)
    }

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        found = [
            {"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in found)
        return problem(422, "Invalid input", detail, found)

    @app.exception_handler(VfenceError)
    async def _core(_req: Request, exc: VfenceError) -> JSONResponse:
        found = getattr(exc, "errors", None) or (
            [{"field": exc.field, "reason": exc.reason}] if exc.field else [])
        return problem(exc.status, exc.title, str(exc), found)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        with service.sessions() as s:
            vms = len(registry.list_vms(s))
        return {
            "status": "ok",
            "switches_connected": len(service.connected()),
            "switches_ready": len(service.ready),
            "links": len(topology.graph(service.state.links).edges),
            "vms": vms,
            "flow_mods_sent": sum(service.flow_mods.values()),
            "packet_in": service.counters["packet_in"],
        }

    @app.get("/v1/hosts")
    def hosts() -> list[dict[str, Any]]:
        connected = set(service.connected())
        with service.sessions() as s:
            rows = registry.switches(s)
        return [
            {
                "name": r.name, "dpid": r.dpid, "label": r.label,
                "connected": int(r.dpid, 16) in connected,
                "flows": len(service.installed.get(int(r.dpid, 16), ())),
                "flow_mods_sent": service.flow_mods.get(int(r.dpid, 16), 0),
            }
            for r in rows
        ]

    @app.post("/v1/vms", status_code=201, responses=errors)
    def create_vm(body: VMIn) -> VMOut:
        spec = registry.VMSpec(body.name, body.mac, tuple(body.ips), body.segment,
                               tuple(body.groups))
        service.add_vm(spec)
        return get_vm(body.name)

    @app.get("/v1/vms")
    def list_vms() -> list[VMOut]:
        with service.sessions() as s:
            return [_vm_out(r) for r in registry.list_vms(s)]

    @app.get("/v1/vms/{name}", responses=errors)
    def get_vm(name: str) -> VMOut:
        with service.sessions() as s:
            return _vm_out(registry.get_vm(s, name))

    @app.delete("/v1/vms/{name}", status_code=204, responses=errors)
    def delete_vm(name: str) -> Response:
        service.remove_vm(name)
        return Response(status_code=204)

    @app.get("/v1/vms/{name}/location", responses=errors)
    def location(name: str) -> LocationOut:
        with service.sessions() as s:
            loc = _location(registry.get_vm(s, name))
        if loc is None:
            raise NotFound(f"VM {name!r} is not attached to any switch port", "name")
        return loc

    @app.get("/v1/vms/{name}/history", responses=errors)
    def history(name: str) -> list[HistoryOut]:
        """Every place the VM has been, oldest first (append-only)."""
        with service.sessions() as s:
            registry.get_vm(s, name)
            return [HistoryOut(host=Host(name=h.switch_name, dpid=h.dpid),
                               port=Port(number=h.port_no, name=h.port_name), since=h.since,
                               until=h.until, how=h.how, convergence_ms=h.convergence_ms)
                    for h in registry.history(s, name)]

    @app.post("/v1/vms/{name}/migrations", status_code=202, responses=errors)
    def announce(name: str, body: MigrationIn) -> dict[str, str]:
        """Pre-announce a live migration: the target host is prepared now, and the move
        completes when the VM's port (OVSDB) or first frame appears there."""
        return service.announce_migration(name, body.target_host)

    @app.get("/v1/events")
    def list_events(
        type: Annotated[str | None, Query(description="e.g. vm-moved, denied")] = None,
        vm: str | None = None,
        host: str | None = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[EventOut]:
        """Audit events, oldest first: bindings, moves, denied samples, policy changes,
        switch connects."""
        with service.sessions() as s:
            rows = registry.events(s, type_=type, vm=vm, host=host, since=since, limit=limit,
                                   offset=offset)
            return [EventOut(id=e.id, ts=e.ts, type=e.type, vm=e.vm, host=e.host,
                             detail=e.detail) for e in rows]

    @app.get("/v1/policy")
    def get_policy() -> dict[str, Any]:
        """The policy document in force ({} when none was ever applied)."""
        return service.policy_document()

    @app.put("/v1/policy", responses=errors)
    def put_policy(
        document: Annotated[dict[str, Any], Body(description="a policy document")],
        dry_run: Annotated[bool, Query(description="report what would change")] = False,
    ) -> PolicyReport:
        """Validate and apply a whole policy document (schemas/policy.schema.json):
        registry, rules and every switch change together or not at all."""
        return PolicyReport(**service.apply_policy(document, dry_run=dry_run))

    return app
