"""The web console at ``/``: pages rendered on the server (Jinja2), made live with htmx.

Every asset ships in the package (``static/``: htmx 2 and its server-sent-events
extension, vendored, BSD Zero Clause; the stylesheet); nothing is fetched from elsewhere,
and the Content-Security-Policy says so to the browser. The pages read what the REST API
reads (``service.queries``) and change nothing but a session: verify and trace are
questions. Live parts re-render when ``/v1/events/stream`` names an event that
concerns them (htmx's ``sse:<type>`` triggers).

Authentication is the API's (``auth.py``): no token on loopback; with a token, the token
form trades it for a session cookie.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.templating import Jinja2Templates

from .. import auth
from ..api import create_app
from ..errors import VfenceError
from ..service import Service
from . import witness

PACKAGE = "vfence.controller.console"
# what moves a VM on the hosts page; what changes the policy page
PLACE_EVENTS = ("vm-moved", "vm-bound", "vm-unbound", "vm-standby", "vm-added", "vm-removed",
                "migration-announced", "migration-expired", "move-refused")
POLICY_EVENTS = ("policy-applied", "vm-added", "vm-removed", "vm-readdressed")
MAX_FORM = 4096  # bytes: the largest form the console sends is far smaller
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")



def _value(v: Any) -> str:
    return f"{v[0]}/{v[1]}" if isinstance(v, list | tuple) and len(v) == 2 else str(v)


def _match(match: dict[str, Any]) -> str:
    """A match as ovs-ofctl writes one: ``in_port=3,eth_dst=01:80:c2:00:00:00/ff:...``."""
    return ",".join(f"{k}={_value(v)}" for k, v in match.items()) or "any"


def _action(a: list[Any]) -> str:
    name, *args = a
    if name == "set":
        return f"set_field:{_value(args[1])}->{args[0]}"
    if name in ("output", "resubmit", "push_vlan"):
        return f"{name}:{args[0]}"
    return f"{name}({','.join(_value(x) for x in args)})" if args else name


def _instructions(ins: list[list[Any]]) -> str:
    """Instructions as ovs-ofctl writes them; none is a drop."""
    out = []
    for kind, *args in ins:
        if kind == "apply":
            out.append("actions=" + ",".join(_action(a) for a in args[0]))
        elif kind == "meta":
            out.append(f"write_metadata:{args[0]:#x}/{args[1]:#x}")
        elif kind == "goto":
            out.append(f"goto_table:{args[0]}")
        else:
            out.append(f"{kind}:{','.join(map(str, args))}")
    return " ".join(out) or "drop"


_env = jinja2.Environment(loader=jinja2.PackageLoader(PACKAGE, "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)
_env.filters.update(match=_match, instructions=_instructions)
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
        return {"hosts": q.hosts(), "where": where,
                "unplaced": [v for v in vms if not v["location"]],
                "timeline": q.latest_events(PLACE_EVENTS, 40)}

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        return page(request, "hosts.html", title="Hosts and VMs", live=PLACE_EVENTS,
                    **hosts_ctx())

    @app.get("/console/hosts", include_in_schema=False)
    def hosts_part(request: Request) -> HTMLResponse:
        return page(request, "_hosts.html", **hosts_ctx())

    def policy_ctx() -> dict[str, Any]:
        return {"rules": q.rules(), **q.matrix()}

    @app.get("/policy", include_in_schema=False)
    def policy(request: Request) -> HTMLResponse:
        return page(request, "policy.html", title="Policy", live=POLICY_EVENTS, **policy_ctx())

    @app.get("/console/policy", include_in_schema=False)
    def policy_part(request: Request) -> HTMLResponse:
        return page(request, "_policy.html", **policy_ctx())

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
        port = form.get("port", "").strip()
        asked = {"source": form.get("source", "").strip(),
                 "destination": form.get("destination", "").strip(),
                 "protocol": form.get("protocol", "tcp"), "port": port,
                 "established": form.get("established") == "on"}
        errors = [{"field": f, "reason": "required"} for f in ("source", "destination")
                  if not asked[f]]
        if port and (not port.isdigit() or not 0 < int(port) < 65536):
            errors.append({"field": "port", "reason": "a number from 1 to 65535"})
        if errors:
            return page(request, "_trace.html", 422, errors=errors, asked=asked)
        try:
            result = await run_in_threadpool(
                q.trace, asked["source"], asked["destination"], asked["protocol"],
                int(port) if port else None, asked["established"])
        except VfenceError as e:
            return page(request, "_trace.html", e.status, asked=asked,
                        errors=[{"field": e.field or "", "reason": e.reason}])
        return page(request, "_trace.html", asked=asked, errors=[], result=result,
                    hops=[dataclasses.asdict(h) for h in result.hops])

    @app.get("/hosts/{host}", include_in_schema=False)
    def flows(request: Request, host: str) -> HTMLResponse:
        try:
            rows = q.flows(host)
        except VfenceError as e:
            return page(request, "error.html", e.status, title="No such host", message=str(e))
        tables: dict[str, list[dict[str, Any]]] = {}
        for f in rows:
            tables.setdefault(f"{f['table']} · {f['table_name']}", []).append(f)
        return page(request, "flows.html", title=f"Flows on {host}", host=host, tables=tables,
                    total=len(rows))

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        if token is None:
            return RedirectResponse(_local(next), 303)
        return page(request, "login.html", title="Sign in", next=_local(next), error="")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
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


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each); a form too large is empty."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _local(path: str) -> str:
    """Where to go after signing in: a path of this server only (no open redirect)."""
    ok = path.startswith("/") and not path.startswith(("//", "/\\")) and "\n" not in path
    return path if ok else "/"
