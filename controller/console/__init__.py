"""The web console at ``/``: pages rendered on the server (Jinja2), made live with htmx.

Every asset ships in the package (``static/``: htmx 2 and its server-sent-events
extension, vendored, BSD Zero Clause; the stylesheet and console.js); nothing is fetched
from elsewhere,
and the Content-Security-Policy says so to the browser. The pages read what the REST API
reads (``service.queries``) and change nothing but a session: verify and trace are
questions. Live parts re-render when ``/v1/events/stream`` names an event that
concerns them (htmx's ``sse:<type>`` triggers).

Authentication is the API's (``auth.py``): no token on loopback; with a token, the token
form trades it for a session cookie.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.templating import Jinja2Templates

from .. import auth
from ..api import create_app
from ..api_schemas import TraceIn
from ..errors import VfenceError, field_path
from ..service import Service
from . import ofctl, witness

PACKAGE = "vfence.controller.console"
# what moves a VM on the hosts page (each in the timeline's words); what changes the
# policy page
EVENT_WORDS = {"vm-moved": "moved to", "vm-bound": "bound on", "vm-unbound": "unbound from",
               "vm-standby": "has a standby port on", "vm-added": "registered",
               "vm-removed": "removed", "migration-announced": "migration announced, to",
               "migration-expired": "announced migration expired",
               "move-refused": "move refused, on"}
PLACE_EVENTS = tuple(EVENT_WORDS)
POLICY_EVENTS = ("policy-applied", "vm-added", "vm-removed", "vm-readdressed")
Picked = Annotated[list[str] | None, Query(description="groups the matrix shows")]
MAX_FORM = 4096  # bytes: the largest form the console sends is far smaller
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


_env = jinja2.Environment(loader=jinja2.PackageLoader(PACKAGE, "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)
_env.filters.update(match=ofctl.match, instructions=ofctl.instructions)
_templates = Jinja2Templates(env=_env)


def create_web_app(service: Service, token: str | None = None) -> FastAPI:
    """The REST API and the console on one server (what ``vfence serve`` runs)."""
    app = create_app(service, token)
    mount(app, service, token)
    return app


def mount(app: FastAPI, service: Service, token: str | None) -> None:
    q = service.queries
    app.mount("/static", StaticFiles(packages=[(PACKAGE, "static")]), name="static")

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            response.headers["Cache-Control"] = "no-store"
        return response

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return _templates.TemplateResponse(request, name, {
            "login": token is not None, "nav": request.url.path, **ctx}, status_code=status)

    def hosts_ctx() -> dict[str, Any]:
        vms = q.vms()
        where: dict[str, list[dict[str, Any]]] = {}
        for vm in vms:
            if vm["location"]:
                where.setdefault(vm["location"]["host"]["name"], []).append(vm)
        hosts = sorted(q.hosts(), key=lambda h: (h["name"] not in where, h["name"]))
        return {"hosts": hosts, "where": where,
                "unplaced": [v for v in vms if not v["location"]],
                "timeline": q.latest_events(PLACE_EVENTS, 40), "words": EVENT_WORDS}

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        return page(request, "hosts.html", title="Hosts and VMs", live=PLACE_EVENTS,
                    **hosts_ctx())

    @app.get("/console/hosts", include_in_schema=False)
    def hosts_part(request: Request) -> HTMLResponse:
        return page(request, "_hosts.html", **hosts_ctx())

    def policy_ctx(picked: list[str]) -> dict[str, Any]:
        found = q.matrix(picked or None)  # (unknown names dropped, at most 24 shown)
        return {"rules": q.rules(), "picked": picked, **found,
                "query": "?" + urlencode([("g", g) for g in found["shown"]]) if picked else ""}

    @app.get("/policy", include_in_schema=False)
    def policy(request: Request, g: Picked = None) -> HTMLResponse:
        return page(request, "policy.html", title="Policy", live=POLICY_EVENTS,
                    **policy_ctx(g or []))

    @app.get("/console/policy", include_in_schema=False)
    def policy_part(request: Request, g: Picked = None) -> HTMLResponse:
        return page(request, "_policy.html", **policy_ctx(g or []))

    @app.get("/verify", include_in_schema=False)
    def verify_page(request: Request) -> HTMLResponse:
        return page(request, "verify.html", title="Verify isolation")

    @app.post("/console/verify", include_in_schema=False)
    def verify(request: Request) -> HTMLResponse:
        verdicts = q.verify()
        return page(request, "_verify.html", verdicts=verdicts,
                    paths={v.pair: witness.steps(v.witness) for v in verdicts})

    @app.get("/trace", include_in_schema=False)
    def trace_page(request: Request) -> HTMLResponse:
        return page(request, "trace.html", title="Trace a packet",
                    vms=[v["name"] for v in q.vms()])

    @app.post("/console/trace", include_in_schema=False)
    async def trace(request: Request) -> HTMLResponse:
        form = await _form(request)
        if form is None:
            return page(request, "_trace.html", 413, errors=[
                {"field": "body", "reason": f"larger than {MAX_FORM} bytes"}])
        fields = {k: v.strip() for k, v in form.items()
                  if k in ("source", "destination", "protocol", "port") and v.strip()}
        try:  # the API's own model: the same rules, the same field names
            asked = TraceIn.model_validate({**fields, "established": "established" in form})
        except ValidationError as e:
            return page(request, "_trace.html", 422, errors=[
                {"field": field_path(err["loc"]), "reason": err["msg"]} for err in e.errors()])
        try:
            result = await run_in_threadpool(q.trace, asked.source, asked.destination,
                                             asked.protocol, asked.port, asked.established)
        except VfenceError as e:
            return page(request, "_trace.html", e.status,
                        errors=[{"field": e.field or "", "reason": e.reason}])
        return page(request, "_trace.html", errors=[], result=result,
                    hops=[dataclasses.asdict(h) for h in result.hops])

    @app.get("/hosts/{host:path}", include_in_schema=False)  # (names may be NAME/BRIDGE)
    def flows(request: Request, host: str) -> HTMLResponse:
        try:
            rows = q.flows(host)
        except VfenceError as e:
            return page(request, "error.html", e.status, title="No such host", message=str(e))
        tables: dict[str, list[dict[str, Any]]] = {}
        for f in sorted(rows, key=lambda f: (f["table"], -f["priority"])):  # as OVS looks
            tables.setdefault(f"{f['table']} · {f['table_name']}", []).append(f)
        return page(request, "flows.html", title=f"Flows on {host}", host=host, tables=tables,
                    total=len(rows))

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, then: Annotated[str, Query(alias="next")] = "/"
                   ) -> Response:
        if token is None:
            return RedirectResponse(_local(then), 303)
        return page(request, "login.html", title="Sign in", next=_local(then), error="")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request) or {}
        nxt = _local(form.get("next", "/"))
        if token is None:
            return RedirectResponse(nxt, 303)
        if not auth.bearer_ok({"authorization": f"Bearer {form.get('token', '')}"}, token):
            return page(request, "login.html", 401, title="Sign in", next=nxt,
                        error="That is not the API token.")
        response = RedirectResponse(nxt, 303)
        response.set_cookie(auth.COOKIE, auth.new_session(token), max_age=auth.TTL,
                            httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(auth.COOKIE, path="/")
        return response


async def _form(request: Request) -> dict[str, str] | None:
    """A urlencoded form's fields (the first value of each); None when the body is larger
    than MAX_FORM (read no further than that)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _local(path: str) -> str:
    """Where to go after signing in: a path of this server only (no open redirect)."""
    ok = path.startswith("/") and not path.startswith(("//", "/\\")) and "\n" not in path
    return path if ok else "/"
