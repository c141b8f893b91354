"""REST API (``/v1``, JSON). Handlers validate, translate and call the service.

Errors are RFC 9457 problem+json documents whose ``errors`` list names each failing
field (``body.mac``, ``path.name``) and the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from . import auth
from .api_schemas import (
    PROBLEM,
    ClusterApplyIn,
    ClusterApplyOut,
    ClusterOut,
    DriftOut,
    EventOut,
    FlowOut,
    HistoryOut,
    HopOut,
    LocationOut,
    MigrationIn,
    MigrationOut,
    PolicyReport,
    Problem,
    TraceIn,
    TraceOut,
    VerdictOut,
    VMIn,
    VMOut,
    VMPatch,
)
from .service import Invalid, NotFound, Service, VfenceError, VMSpec, field_path

OPEN_PATHS = {"/v1/health"}  # for load balancers and probes; says nothing sensitive
SIGN_IN = {"/login", "/logout"}  # need no session (signing out of an expired one too)
API_PATHS = ("/v1/", "/metrics", "/openapi.json", "/docs", "/redoc")  # 401, not the form
STREAM_POLL, STREAM_KEEPALIVE = 0.2, 15.0  # seconds: new events looked for, idle comment
REFUSED_FIELD = {auth.NO_CREDENTIALS: "header.authorization", auth.CROSS_SITE: "header.origin",
                 auth.NOT_LOOPBACK: "header.host"}


def _to_sign_in(request: Request, path: str) -> Response:
    """A console page without a session: the token form, then back. A page's own
    request (htmx) is told to send the whole page there (HX-Redirect)."""
    if request.headers.get("hx-request"):
        at = urlsplit(request.headers.get("hx-current-url", ""))
        page = (at.path or "/") + (f"?{at.query}" if at.query else "")
        return Response(status_code=401, headers={
            "HX-Redirect": f"/login?next={quote(page)}"})
    if request.method != "GET":
        return problem(401, "Unauthorized", auth.NO_CREDENTIALS,
                       [{"field": "header.authorization", "reason": auth.NO_CREDENTIALS}])
    query = request.url.query
    return RedirectResponse(f"/login?next={quote(path + ('?' + query if query else ''))}", 303)


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]]) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=errors)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM)


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
                extra = {"401": "missing or wrong bearer token (when a token is set)",
                         "403": "a browser's request from another site's page, or without "
                                "a token a Host that is not a loopback address"}
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
        path = request.scope["path"]  # what routing uses (never a Host-derived URL)
        refused = None if path in OPEN_PATHS else auth.refusal(
            request.method, request.headers, request.cookies, token)
        if refused == auth.NO_CREDENTIALS and (path in SIGN_IN or path.startswith("/static/")):
            refused = None  # the token form and its assets (still never a cross-site POST)
        if refused == auth.NO_CREDENTIALS and not path.startswith(API_PATHS):
            return _to_sign_in(request, path)
        if refused is not None:
            status = 401 if refused == auth.NO_CREDENTIALS else 403
            response: Any = problem(status, HTTPStatus(status).phrase, refused,
                                    [{"field": REFUSED_FIELD[refused], "reason": refused}])
            if status == 401:
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
        response = problem(exc.status, exc.title, str(exc), found)
        if exc.status == 503:
            response.headers["Retry-After"] = "1"
        return response

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return service.queries.health()

    @app.get("/v1/cluster", responses=errors)
    def cluster() -> ClusterOut:
        """The controller cluster (vfence serve --cluster): its members, their health
        and the switches each masters, with their terms (404 for a lone controller)."""
        if service.replica is None:
            raise NotFound("this controller does not run as a cluster member (--cluster)",
                           "cluster")
        return ClusterOut(**service.replica.status())

    pushes = ThreadPoolExecutor(4, "cluster-apply")  # not the pool that waits on writes

    @app.post("/v1/cluster/apply", responses=errors)
    async def cluster_apply(body: ClusterApplyIn, x_vfence_member: Annotated[
            str | None, Header(description="NAME TIME SIGNATURE: the sending member's proof")
    ] = None) -> ClusterApplyOut:
        """Members only: bring a switch this member masters to another member's new
        flow set (403 without a member's signature; 409 if this member is not its master
        in that term; 503 if the switch refused)."""
        if service.replica is None:
            raise NotFound("this controller does not run as a cluster member (--cluster)",
                           "cluster")
        # a change at another member waits on this answer while it holds the shared
        # state: run apart from the requests that may be waiting for that same state
        apply = functools.partial(service.replica.apply, int(body.dpid, 16), body.term,
                                  body.flows, x_vfence_member)
        return ClusterApplyOut(flow_mods=await asyncio.get_running_loop().run_in_executor(
            pushes, apply))

    @app.get("/v1/hosts")
    def hosts() -> list[dict[str, Any]]:
        return service.queries.hosts()

    @app.post("/v1/vms", status_code=201, responses=errors)
    def create_vm(body: VMIn) -> VMOut:
        service.add_vm(VMSpec(body.name, body.mac, tuple(body.ips), body.segment,
                              tuple(body.groups)))
        return get_vm(body.name)

    @app.get("/v1/vms")
    def list_vms() -> list[VMOut]:
        return [VMOut(**v) for v in service.queries.vms()]

    @app.get("/v1/vms/{name}", responses=errors)
    def get_vm(name: str) -> VMOut:
        return VMOut(**service.queries.vm(name))

    @app.patch("/v1/vms/{name}", responses=errors)
    def readdress_vm(name: str, body: VMPatch) -> VMOut:
        """New addresses and/or segment (a move across subnets): flows, DNS records and BGP
        routes follow; a VM of the policy document changes in the stored document."""
        service.readdress_vm(name, None if body.ips is None else tuple(body.ips),
                             body.segment)
        return get_vm(name)

    @app.delete("/v1/vms/{name}", status_code=204, responses=errors)
    def delete_vm(name: str) -> Response:
        service.remove_vm(name)
        return Response(status_code=204)

    @app.get("/v1/vms/{name}/location", responses=errors)
    def location(name: str) -> LocationOut:
        return LocationOut(**service.queries.location(name))

    @app.get("/v1/vms/{name}/history", responses=errors)
    def history(name: str) -> list[HistoryOut]:
        """Every place the VM has been, oldest first (append-only)."""
        return [HistoryOut(**h) for h in service.queries.history(name)]

    @app.get("/v1/vms/{name}/migrations", responses=errors)
    def migrations(name: str) -> list[MigrationOut]:
        """The VM's moves (consecutive places in its history), oldest first, with how the
        new place was detected and how long the network took to follow."""
        return [MigrationOut(**mv) for mv in service.queries.migrations(name)]

    @app.post("/v1/vms/{name}/migrations", status_code=202, responses=errors)
    def announce(name: str, body: MigrationIn) -> dict[str, str]:
        """Pre-announce a live migration: the target host is prepared now, and the move
        completes when the VM's port (OVSDB) or first frame appears there."""
        return service.announce_migration(name, body.target_host)

    @app.get("/v1/hosts/{host}/flows", responses=errors)
    def host_flows(host: str) -> list[FlowOut]:
        """The flows installed on a switch (bridge name or dpid), read from it now, with
        packet and byte counters."""
        return [FlowOut(**f) for f in service.queries.flows(host)]

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus exposition. Rule counters are read from the switches now."""
        return Response(service.queries.metrics(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/drift")
    def drift() -> list[DriftOut]:
        """Does every switch hold exactly what the controller compiled? Each connected
        switch's flows, read now, against the compiled ones: missing and extra."""
        return [DriftOut(**d) for d in service.queries.drift()]

    @app.post("/v1/verify", responses=errors)
    def verify() -> list[VerdictOut]:
        """Read the flows installed on every switch and prove, for each isolation pair,
        that no packet from one group can reach the other (header-space walk of the real
        tables along the real links). A broken pair comes with a witness path; a pair the
        walk can neither prove nor break is ``unknown``, with the reason."""
        return [VerdictOut(pair=list(v.pair), status=v.status, reason=v.reason or None,
                           isolated=v.isolated, complete=v.complete, witness=v.witness,
                           explored=v.explored) for v in service.queries.verify()]

    @app.post("/v1/trace", responses=errors)
    def trace(body: TraceIn) -> TraceOut:
        """Why can (or can't) one VM reach another: one packet, as the source would send
        it, walked through the flows read from the switches along the real links. The
        verdict, every flow it met (switch, table, band, owner in words) and, for a
        drop, the flow that dropped it (a flow vfence did not install is named so)."""
        r = service.queries.trace(body.source, body.destination, body.protocol, body.port,
                                  body.established)
        return TraceOut(verdict=r.verdict, reason=r.reason, reached=r.reached, packet=r.packet,
                        hops=[HopOut(**{**dataclasses.asdict(h), "cookie": f"{h.cookie:#018x}"})
                              for h in r.hops])

    @app.get("/v1/events/stream", response_class=StreamingResponse, responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
              "description": "server-sent events, one per audit event"}, **errors})
    async def stream_events(
        request: Request,
        type: Annotated[str | None, Query(description="e.g. vm-moved, denied")] = None,
        vm: str | None = None,
        host: str | None = None,
        last_event_id: Annotated[int | None, Header(ge=0, le=2**62)] = None,
    ) -> StreamingResponse:
        """Server-sent events: each audit event as it is recorded (``id``: its id,
        ``event``: its type, ``data``: the event as /v1/events gives it), filtered like
        /v1/events. It starts with the next event; with ``Last-Event-ID`` (an
        EventSource resends it when it reconnects) it resumes after that one. A comment
        every 15 s keeps idle proxies from closing it."""
        after = last_event_id if last_event_id is not None else \
            await run_in_threadpool(service.queries.last_event_id)
        until = auth.stream_until(request.headers, request.cookies, token)
        return StreamingResponse(_events(request, type, vm, host, after, until),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def _events(request: Request, type_: str | None, vm: str | None, host: str | None,
                      after: int, until: float | None) -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        quiet = 0.0
        while not await request.is_disconnected() and (until is None or time.time() < until):
            rows = await run_in_threadpool(functools.partial(
                service.queries.events, type_=type_, vm=vm, host=host, after=after, limit=100))
            for e in rows:
                after = e["id"]
                yield f"id: {after}\nevent: {e['type']}\ndata: " \
                      f"{EventOut(**e).model_dump_json()}\n\n"
            quiet = 0.0 if rows else quiet + STREAM_POLL
            if quiet >= STREAM_KEEPALIVE:
                quiet = 0.0
                yield ": keep-alive\n\n"
            if len(rows) < 100:
                await asyncio.sleep(STREAM_POLL)

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
        return [EventOut(**e) for e in service.queries.events(
            type_=type, vm=vm, host=host, since=start, limit=limit, offset=offset)]

    @app.get("/v1/segments")
    def segments() -> list[dict[str, Any]]:
        """Layer-2 segments (written through POST /v1/vms or the policy document); ``tag``
        is what flows carry (metadata, conntrack zone, cookie owner id). Prefixes,
        gateways and the joining router come from the policy document (null if none)."""
        return service.queries.segments()

    @app.get("/v1/routers")
    def routers() -> list[dict[str, Any]]:
        """Distributed routers (from the policy document): each one's MAC (derived from
        its name: stable across restarts and controllers) and the segments it joins,
        with their gateways."""
        return service.queries.routers()

    @app.get("/v1/external")
    def external() -> list[dict[str, Any]]:
        """External networks (from the policy document): the gateway and the MAC resolved
        for it, the routers reaching it, each host's uplink there, and the BGP session
        (state, since) and the host routes announced (each routed VM's /32 via the uplink
        address of its host)."""
        return service.queries.external()

    @app.get("/v1/dns")
    def dns_status() -> dict[str, Any]:
        """The DNS server that RFC 2136 updates keep each VM's names current in: state
        (current, pending, failing), the RRsets it has not taken yet (the first names),
        the last error and when the next retry is."""
        return service.queries.dns()

    @app.get("/v1/groups")
    def groups() -> list[dict[str, Any]]:
        """Isolation groups and their numbers (field `bit`, its old name)."""
        return service.queries.groups()

    @app.get("/v1/rules")
    def rules() -> list[dict[str, Any]]:
        """The rules in force, in evaluation order (change them with PUT /v1/policy)."""
        return service.queries.rules()

    @app.get("/v1/policy")
    def get_policy() -> dict[str, Any]:
        """The policy document in force ({} when none was ever applied)."""
        return service.queries.policy()

    @app.put("/v1/policy", responses=errors)
    def put_policy(
        document: Annotated[dict[str, Any], Body(description="a policy document")],
        dry_run: Annotated[bool, Query(description="report what would change")] = False,
    ) -> PolicyReport:
        """Validate and apply a whole policy document (schemas/policy.schema.json):
        registry, rules and every switch change together or not at all."""
        return PolicyReport(**service.apply_policy(document, dry_run=dry_run))

    return app
