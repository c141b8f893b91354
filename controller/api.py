"""REST API (``/v1``, JSON). Handlers validate, translate and call the service.

Errors are RFC 9457 problem+json documents whose ``errors`` list names each failing
field (``body.mac``, ``path.name``) and the reason.
"""

from __future__ import annotations

import hmac
import re
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from . import compiler, registry, topology
from . import verify as verify_mod
from .addresses import vm_address, vm_mac
from .errors import Invalid, NotFound, VfenceError
from .flows import Owner, cookie_owner
from .policy import field_path
from .service import Service
from .store import models as m

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME, description="letters, digits, '_', '.', '-'")]
PROBLEM = "application/problem+json"
OPEN_PATHS = {"/v1/health"}  # for load balancers and probes; says nothing sensitive


VMAddress = Annotated[str, AfterValidator(vm_address), Field(
    description="unicast IPv4/IPv6 address without a zone index; not loopback, multicast, "
                "unspecified or broadcast", json_schema_extra={"anyOf": [
                    {"format": "ipv4"}, {"format": "ipv6"}]})]


class VMIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    mac: str = Field(description="unicast MAC, e.g. 00:00:00:00:01:01",
                     pattern=r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
    ips: list[VMAddress] = Field(default_factory=list, max_length=64,
                                 json_schema_extra={"uniqueItems": True})
    segment: Name
    groups: list[Name] = Field(default_factory=list, max_length=64,
                               json_schema_extra={"uniqueItems": True})

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        return vm_mac(v)

    @field_validator("ips")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("addresses repeat")
        return v

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


class VerdictOut(BaseModel):
    pair: list[str]
    status: verify_mod.Status = Field(
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
    priority: int
    match: dict[str, Any]
    instructions: Any
    cookie: str
    owner: str = Field(description="base, vm:<tag>, segment:<tag>, fabric, rule:<index>, "
                       "policy, isolation:<index>, or foreign (not written by vfence)")
    packets: int
    bytes: int


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


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


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]]) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=errors)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM)


def _location(row: m.VM) -> LocationOut | None:
    loc = row.location
    if loc is None:
        return None
    return LocationOut(
        vm=row.name, host=Host(name=loc.switch_name, dpid=loc.dpid),
        port=Port(number=loc.port_no, name=loc.port_name), since=loc.since, how=loc.how,
    )


def _vm_out(row: m.VM) -> VMOut:
    return VMOut(
        name=row.name, mac=row.mac, ips=[a.ip for a in row.ips], segment=row.segment.name,
        groups=sorted(g.name for g in row.groups), location=_location(row),
    )


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """The REST application. With ``token`` every endpoint but /v1/health needs
    ``Authorization: Bearer <token>``."""
    app = FastAPI(title="vfence", version="0.1.0", description=__doc__)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": Problem} for code in (401, 404, 409, 422)
    }

    def openapi() -> dict[str, Any]:
        """FastAPI's spec, with every error documented as problem+json (what we send)."""
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
        spec["components"]["schemas"]["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}")
        spec["components"]["schemas"].pop("HTTPValidationError", None)
        spec["components"]["schemas"].pop("ValidationError", None)
        ref = {"$ref": "#/components/schemas/Problem"}
        for url, path in spec["paths"].items():
            for op in path.values():
                extra = {"401": "missing or wrong bearer token (when a token is set)"}
                if url in OPEN_PATHS:
                    extra = {}
                if op.get("parameters") or op.get("requestBody"):
                    extra["422"] = "invalid input: `errors` names each field and reason"
                if op.get("requestBody"):
                    extra["400"] = "the body is not JSON"
                for code, text in extra.items():
                    op.setdefault("responses", {}).setdefault(code, {"description": text})
                for code, resp in op.get("responses", {}).items():
                    if code[0] in "45":
                        resp["content"] = {PROBLEM: {"schema": ref}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]

    @app.middleware("http")
    async def _auth_and_timing(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        if token is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
                response: Any = problem(401, "Unauthorized", "a valid bearer token is required",
                                        [{"field": "header.authorization",
                                          "reason": "missing or wrong bearer token"}])
                response.headers["WWW-Authenticate"] = 'Bearer realm="vfence"'
                return response
        response = await call_next(request)
        if service is not None:
            route = request.scope.get("route")
            service.metrics.api_latency.labels(
                request.method, getattr(route, "path", "unmatched"), str(response.status_code)
            ).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic's error locations as the policy parser writes paths: body.ips[0]
        found = [{"field": field_path(e["loc"]), "reason": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in found)
        return problem(422, "Invalid input", detail, found)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = problem(exc.status_code, str(exc.detail), str(exc.detail), [])
        if exc.status_code == 405:
            # every method any route of this path accepts (Starlette names only the first)
            allowed: set[str] = set()
            for route in app.routes:
                match, _ = route.matches({**request.scope, "method": "*"})
                if match != Match.NONE:
                    allowed |= set(getattr(route, "methods", set()) or set())
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

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
                "ports": [{"number": n, "name": name} for n, name in
                          sorted(service.ports.get(int(r.dpid, 16), {}).items())],
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

    @app.get("/v1/vms/{name}/migrations", responses=errors)
    def migrations(name: str) -> list[MigrationOut]:
        """The VM's moves (consecutive places in its history), oldest first, with how the
        new place was detected and how long the network took to follow."""
        with service.sessions() as s:
            registry.get_vm(s, name)
            hist = registry.history(s, name)
        return [MigrationOut(source=Host(name=a.switch_name, dpid=a.dpid),
                             target=Host(name=b.switch_name, dpid=b.dpid), at=b.since,
                             how=b.how, convergence_ms=b.convergence_ms)
                for a, b in zip(hist, hist[1:], strict=False)]

    @app.post("/v1/vms/{name}/migrations", status_code=202, responses=errors)
    def announce(name: str, body: MigrationIn) -> dict[str, str]:
        """Pre-announce a live migration: the target host is prepared now, and the move
        completes when the VM's port (OVSDB) or first frame appears there."""
        return service.announce_migration(name, body.target_host)

    @app.get("/v1/hosts/{host}/flows", responses=errors)
    def host_flows(host: str) -> list[FlowOut]:
        """The flows installed on a switch (bridge name or dpid), read from it now, with
        packet and byte counters."""
        dpid = service.find_switch(host)
        if dpid is None:
            raise NotFound(f"no switch named {host!r}", "host")
        out = []
        for f, packets, nbytes in sorted(service.read_flows(dpid), key=lambda x: x[0]):
            owner = cookie_owner(f.cookie)
            out.append(FlowOut(
                table=f.table, priority=f.priority, match={k: _jsonable(v) for k, v in f.match},
                instructions=_jsonable(f.instructions), cookie=f"{f.cookie:#018x}",
                owner=f"{owner[0].name.lower()}:{owner[1]}" if owner else "foreign",
                packets=packets, bytes=nbytes))
        return out

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus exposition. Rule counters are read from the switches now."""
        gauges = service.metrics
        gauges.switches.set(len(service.connected()))
        for dpid, installed in list(service.installed.items()):
            for table, n in compiler.count_by_table(installed).items():
                gauges.flows.labels(service.switch_name(dpid), str(table)).set(n)
        rules = {r.index: r.name for r in service.state.policy.rules}
        packets: dict[str, int] = {}
        nbytes: dict[str, int] = {}
        for dpid in service.connected():
            try:
                flows = service.read_flows(dpid)
            except Exception:  # a switch that just went away: skip it this scrape
                continue
            for f, p, b in flows:
                owner = cookie_owner(f.cookie)
                if owner is None:
                    continue
                name = (rules.get(owner[1]) if owner[0] == Owner.RULE else
                        f"isolation[{owner[1]}]" if owner[0] == Owner.ISOLATION else
                        "anti-spoofing" if owner[0] == Owner.VM and not f.instructions
                        and f.table == 0 else None)
                if name:
                    packets[name] = packets.get(name, 0) + p
                    nbytes[name] = nbytes.get(name, 0) + b
        for name in packets:
            gauges.rule_packets.labels(name).set(packets[name])
            gauges.rule_bytes.labels(name).set(nbytes[name])
        return Response(generate_latest(gauges.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/verify", responses=errors)
    def verify() -> list[VerdictOut]:
        """Read the flows installed on every switch and prove, for each isolation pair,
        that no packet from one group can reach the other (header-space walk of the real
        tables along the real links). A broken pair comes with a witness path; a pair the
        walk can neither prove nor break is ``unknown``, with the reason."""
        return [VerdictOut(pair=list(v.pair), status=v.status, reason=v.reason or None,
                           isolated=v.isolated, complete=v.complete, witness=v.witness,
                           explored=v.explored) for v in service.verify()]

    @app.get("/v1/events")
    def list_events(
        type: Annotated[str | None, Query(description="e.g. vm-moved, denied")] = None,
        vm: str | None = None,
        host: str | None = None,
        since: Annotated[str | None, Query(
            description="RFC 3339 time, e.g. 2026-11-27T09:00:00Z",
            json_schema_extra={"format": "date-time"})] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> list[EventOut]:
        """Audit events, oldest first: bindings, moves, denied samples, policy changes,
        switch connects."""
        start = None
        if since is not None:
            try:
                start = datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError:
                raise Invalid("not an RFC 3339 date-time", "query.since") from None
            if start.tzinfo is None or not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]", since):
                raise Invalid("needs a full date, a time and a UTC offset", "query.since")
        with service.sessions() as s:
            rows = registry.events(s, type_=type, vm=vm, host=host, since=start, limit=limit,
                                   offset=offset)
            return [EventOut(id=e.id, ts=e.ts, type=e.type, vm=e.vm, host=e.host,
                             detail=e.detail) for e in rows]

    @app.get("/v1/segments")
    def segments() -> list[dict[str, Any]]:
        """Layer-2 segments (written through POST /v1/vms or the policy document); ``tag``
        is what flows carry (metadata, conntrack zone, cookie owner id)."""
        with service.sessions() as s:
            return [{"name": r.name, "subnet": r.subnet, "id": r.id, "tag": r.tag}
                    for r in registry.segments(s)]

    @app.get("/v1/groups")
    def groups() -> list[dict[str, Any]]:
        """Isolation groups and their bit in the flows' group tags."""
        with service.sessions() as s:
            return [{"name": r.name, "bit": r.bit} for r in registry.groups(s)]

    @app.get("/v1/rules")
    def rules() -> list[dict[str, Any]]:
        """The rules in force, in evaluation order (change them with PUT /v1/policy)."""
        return [{"index": r.index, "name": r.name, "from": str(r.src), "to": str(r.dst),
                 "protocol": r.protocol, "ports": [list(p) for p in r.ports],
                 "action": r.action} for r in service.state.policy.rules]

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
