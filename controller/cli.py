"""The ``vfence`` command line. ``serve`` runs the controller; the rest talk to it over REST
(or, for ``db``, to the database directly). Exit codes: 0 ok, 1 failed, 2 bad usage (and
for ``verify``: 2 when no pair is broken but some could not be proved)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import auth, leases
from .errors import VfenceError
from .model import Policy
from .store import db

app = typer.Typer(help="vfence: secure per-port switching for virtual networks",
                  no_args_is_help=True)
db_app = typer.Typer(help="database schema", no_args_is_help=True)
policy_app = typer.Typer(help="isolation policy documents", no_args_is_help=True)
vm_app = typer.Typer(help="virtual machines", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(vm_app, name="vm")
app.add_typer(policy_app, name="policy")
host_app = typer.Typer(help="switches (hypervisor bridges and fabric)", no_args_is_help=True)
app.add_typer(host_app, name="host")
net_app = typer.Typer(help="segments and the routers that join them", no_args_is_help=True)
app.add_typer(net_app, name="net")
console = Console()
err = Console(stderr=True)

DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL [env VFENCE_DB]")]
ApiOpt = Annotated[
    str, typer.Option("--api", envvar="VFENCE_API", help="controller REST base URL")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``vm``/``host`` context when the record carries it."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        for key in ("vm", "host", "port", "how"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(level: str, as_json: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])


@app.command()
def serve(
    database: DbOpt = None,
    ofp_port: Annotated[int, typer.Option(min=1, max=65535, help="OpenFlow port")] = 6653,
    ofp_host: Annotated[str, typer.Option(help="OpenFlow listen address")] = "0.0.0.0",
    api_port: Annotated[int, typer.Option(min=1, max=65535, help="REST port")] = 8080,
    api_host: Annotated[str, typer.Option(help="REST listen address")] = "127.0.0.1",
    ovsdb: Annotated[
        list[str] | None,
        typer.Option(help="each host's OVSDB, [NAME=]REMOTE (repeat per host), e.g. "
                          "unix:/var/run/openvswitch/db.sock or hv1=tcp:10.0.0.11:6640; NAME "
                          "overrides the host name the OVSDB gives (external_ids:vfence-host, "
                          "else hostname). Fabric ports, VM ports and host names come from "
                          "here"),
    ] = None,
    learn_first_frame: Annotated[
        bool, typer.Option(help="bind a registered VM on the first frame from an unbound port "
                                "(all hosts)")
    ] = False,
    learn_first_frame_on: Annotated[
        list[str] | None, typer.Option(help="the same, on this host only (host name; repeatable)")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="policy document (YAML/JSON) to apply at start")
    ] = None,
    api_token_file: Annotated[
        str | None, typer.Option(help="file holding the REST bearer token [env VFENCE_API_TOKEN]")
    ] = None,
    api_cert: Annotated[str | None, typer.Option(help="TLS certificate for the REST API")] = None,
    api_key: Annotated[str | None, typer.Option(help="TLS key for the REST API")] = None,
    ofp_cert: Annotated[str | None, typer.Option(help="TLS certificate for OpenFlow")] = None,
    ofp_key: Annotated[str | None, typer.Option(help="TLS key for OpenFlow")] = None,
    ofp_ca: Annotated[str | None, typer.Option(help="CA that signs the switches' certs")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    log_json: Annotated[bool, typer.Option(help="JSON log lines (with vm/host context)")]
    = False,
    cluster: Annotated[bool, typer.Option(
        "--cluster", help="run as one member of a cluster of controllers sharing the "
                          "--db (PostgreSQL); every switch lists every member")] = False,
    member: Annotated[str | None, typer.Option(
        help="this member's name, unique in the cluster [default: HOSTNAME-APIPORT]")] = None,
    advertise: Annotated[str | None, typer.Option(
        help="the URL other members and clients reach this member's API at "
             "[default: http(s)://API-HOST:API-PORT]")] = None,
    bgp_address: Annotated[str | None, typer.Option(
        help="a cluster member's own address toward BGP peers (each member speaks BGP "
             "and announces every VM route; members sharing a machine need one each) "
             "[default: the kernel's route to the peer]")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="run every start-up check (options, token, TLS files, the "
                        "database, upgrading its schema as serve does, the stored policy, "
                        "--policy as a dry run), then exit 0 without serving")] = False,
) -> None:
    """Run the controller: OpenFlow 1.3, REST API and OVSDB monitors."""
    _setup_logging(log_level, log_json)
    from vfence.apps.runner import ServeOptions, run  # os-ken only when serving

    from .replica import Replica
    from .service import Service

    token = _api_token(api_token_file)
    if token is not None and not token.isascii():  # (an HTTP header carries ASCII only)
        err.print("[red]the API token must be ASCII: a bearer header cannot carry "
                  "anything else[/red]")
        raise typer.Exit(2)
    if token is None and not auth.loopback_name(api_host):
        err.print(f"[red]--api-host {api_host} is reachable beyond this machine: set "
                  f"VFENCE_API_TOKEN or --api-token-file[/red]")
        raise typer.Exit(2)
    if bool(api_cert) != bool(api_key) or len({bool(ofp_cert), bool(ofp_key), bool(ofp_ca)}) > 1:
        err.print("[red]TLS needs all of its files: --api-cert with --api-key; --ofp-cert, "
                  "--ofp-key and --ofp-ca together[/red]")
        raise typer.Exit(2)
    doc = _load_policy_or_exit(policy)[0] if policy else None
    url = db.resolve_url(database)
    if cluster and not url.startswith("postgresql"):
        err.print(f"[red]--cluster: the members share a PostgreSQL database (--db "
                  f"postgresql://...), not {db.redact(url)}[/red]")
        raise typer.Exit(2)
    if bgp_address is not None and not cluster:
        err.print("[red]--bgp-address: for a cluster member (--cluster); a lone "
                  "controller uses its route to the peer[/red]")
        raise typer.Exit(2)
    if bgp_address is not None and not _is_address(bgp_address):
        err.print(f"[red]--bgp-address: {bgp_address!r} is not an IP address[/red]")
        raise typer.Exit(2)
    if cluster and advertise is None and api_host in ("0.0.0.0", "::"):
        err.print(f"[red]--advertise: --api-host {api_host} is not an address others can "
                  f"reach: give the URL other members and clients use[/red]")
        raise typer.Exit(2)
    engine = db.make_engine(url)
    db.upgrade(engine)
    learn: bool | frozenset[str] = learn_first_frame or frozenset(learn_first_frame_on or [])
    try:
        service = Service(db.sessions(engine), learn_first_frame=learn,
                          replace_stored_policy=doc is not None)
    except VfenceError as e:
        err.print("[red]the state stored in the database no longer validates (a stored "
                  "policy: start with --policy FILE to replace it):[/red]")
        _print_error(e)
        raise typer.Exit(2) from None
    if cluster:
        name = member or f"{socket.gethostname()}-{api_port}"
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", name):
            err.print(f"[red]--member: {escape(name)!r}: letters, digits, '.', '_' and '-' "
                      "only, 128 at most[/red]")
            raise typer.Exit(2)
        scheme = "https" if api_cert else "http"
        url_self = advertise or f"{scheme}://{api_host}:{api_port}"
        try:
            presence = leases.Presence(engine, name)
        except RuntimeError as e:
            err.print(f"[red]--member: {e}[/red]")
            raise typer.Exit(2) from None
        service.replica = Replica(service.sessions, service.switches, name, url_self, token)
        service.replica.presence = presence
        if auth.loopback_name(urlsplit(url_self).hostname or ""):
            err.print(f"[yellow]--advertise {url_self}: a loopback address; members on "
                      "other machines cannot reach this one[/yellow]")
        service.replica.bgp_address = bgp_address
    if doc is not None:
        try:
            service.apply_policy(doc, dry_run=check)
        except VfenceError as e:
            _print_error(e)
            raise typer.Exit(2) from None
    opts = ServeOptions(ofp_host, ofp_port, api_host, api_port, list(ovsdb or []), token,
                        api_cert, api_key, ofp_cert, ofp_key, ofp_ca)
    if check:
        console.print(f"start-up checks passed: would serve OpenFlow on {ofp_host}:{ofp_port}, "
                      f"the API on {api_host}:{api_port}"
                      f"{' with a token' if token else ''}, {len(opts.ovsdb)} OVSDB(s), "
                      f"database {db.redact(url)}"
                      + (f", as cluster member {service.replica.name} at "
                         f"{service.replica.advertise}" if service.replica else ""))
        raise typer.Exit(0)
    run(service, opts)


def _is_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _api_token(path: str | None) -> str | None:
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as e:
            err.print(f"[red]--api-token-file: cannot read {path}: {e.strerror}[/red]")
            raise typer.Exit(2) from None
        if not token:
            err.print(f"[red]--api-token-file: {path} is empty[/red]")
            raise typer.Exit(2)
        return token
    return os.environ.get("VFENCE_API_TOKEN") or None


@db_app.command("upgrade")
def db_upgrade(database: DbOpt = None) -> None:
    """Create or upgrade the schema (Alembic) at the database URL."""
    url = db.resolve_url(database)
    db.upgrade(db.make_engine(url))
    console.print(f"schema at head: {url}")


# --- policy -------------------------------------------------------------------------------


def _print_error(e: VfenceError) -> None:
    """Every field an error names, with its reason."""
    _print_errors(getattr(e, "errors", None) or [{"field": e.field or "", "reason": e.reason}])


def _print_errors(errors: list[dict[str, str]]) -> None:
    for e in errors:
        err.print(f"[red]{e['field']}[/red]: {e['reason']}")


def _load_policy_or_exit(path: str) -> tuple[dict[str, Any], Policy]:
    """The document and what it means, or every problem printed and exit 1."""
    from . import policy as policy_mod

    try:
        doc = policy_mod.load_file(path)
        return doc, policy_mod.parse(doc)
    except policy_mod.PolicyError as e:
        err.print(f"[red]{path}: {len(e.errors)} problem(s)[/red]")
        _print_errors(e.errors)
        raise typer.Exit(1) from None


@policy_app.command("check")
def policy_check(file: str, as_json: JsonOpt = False) -> None:
    """Validate a policy document offline (no controller needed)."""
    _, p = _load_policy_or_exit(file)
    summary = {"valid": True, "segments": len(p.segments), "groups": len(p.groups),
               "vms": len(p.vms), "rules": len(p.rules), "isolation": len(p.isolation)}
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        console.print(f"[green]{file} is valid[/green]: {summary['vms']} VMs, "
                      f"{summary['groups']} groups, {summary['rules']} rules, "
                      f"{summary['isolation']} isolation pairs")


@policy_app.command("apply")
def policy_apply(
    file: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only report what would change")]
    = False,
    api: ApiOpt = "http://127.0.0.1:8080",
    as_json: JsonOpt = False,
) -> None:
    """Apply a policy document through the controller (all switches, atomically)."""
    doc, _ = _load_policy_or_exit(file)
    with console.status("applying policy and programming switches"):
        report = _call(api, "PUT", "/v1/policy", json=doc,
                       params={"dry_run": "true" if dry_run else "false"})
    if as_json:
        console.print_json(json.dumps(report))
        return
    t = Table("host", "flows", "add", "delete", title="dry run" if dry_run else "applied")
    for host, h in report["hosts"].items():
        t.add_row(host, str(h["flows"]), str(h["add"]), str(h["delete"]))
    console.print(t)
    v = report["vms"]
    console.print(f"VMs added {len(v['added'])}, removed {len(v['removed'])}, changed "
                  f"{len(v['changed'])}; {len(report['rules'])} rules")


@policy_app.command("show")
def policy_show(api: ApiOpt = "http://127.0.0.1:8080") -> None:
    """Print the policy document in force (JSON)."""
    console.print_json(json.dumps(_call(api, "GET", "/v1/policy")))


# --- REST client commands -----------------------------------------------------------------


def _call(api: str, method: str, path: str, **kw: Any) -> Any:
    token = os.environ.get("VFENCE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, api.rstrip("/") + path, timeout=30, headers=headers, **kw)
    except httpx.HTTPError as e:
        err.print(f"[red]cannot reach the controller at {api}: {e}[/red]")
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            body = {}
        err.print(f"[red]error {r.status_code}: {body.get('title') or r.text}[/red]")
        _print_errors(body.get("errors") or [{"field": "", "reason": body.get("detail", "")}])
        raise typer.Exit(1)
    return r.json() if r.content else None


def _vm_table(rows: list[dict[str, Any]]) -> Table:
    t = Table("name", "mac", "ips", "segment", "groups", "host", "port")
    for v in rows:
        loc = v.get("location") or {}
        host = (loc.get("host") or {}).get("name", "-")
        port = (loc.get("port") or {}).get("name", "-")
        t.add_row(v["name"], v["mac"], ",".join(v["ips"]), v["segment"], ",".join(v["groups"]),
                  host, port)
    return t


@vm_app.command("list")
def vm_list(api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False) -> None:
    """List registered VMs and where they are."""
    rows = _call(api, "GET", "/v1/vms")
    console.print_json(json.dumps(rows)) if as_json else console.print(_vm_table(rows))


@vm_app.command("show")
def vm_show(name: str, api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False) -> None:
    """One VM."""
    row = _call(api, "GET", f"/v1/vms/{name}")
    console.print_json(json.dumps(row)) if as_json else console.print(_vm_table([row]))


@vm_app.command("add")
def vm_add(
    name: str,
    mac: Annotated[str, typer.Option(help="the VM's MAC")],
    segment: Annotated[str, typer.Option(help="layer-2 segment")],
    ip: Annotated[list[str] | None, typer.Option(help="an IP of the VM (repeatable)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="isolation group (repeatable)")] = None,
    api: ApiOpt = "http://127.0.0.1:8080",
) -> None:
    """Register a VM."""
    body = {"name": name, "mac": mac, "ips": ip or [], "segment": segment, "groups": group or []}
    _call(api, "POST", "/v1/vms", json=body)
    console.print(f"registered {name}")


@vm_app.command("readdress")
def vm_readdress(
    name: str,
    ip: Annotated[list[str] | None, typer.Option(
        help="the VM's new IPs (repeatable; all of them: they replace the old ones)")] = None,
    segment: Annotated[str | None, typer.Option(help="the VM's new segment")] = None,
    api: ApiOpt = "http://127.0.0.1:8080",
) -> None:
    """New addresses and/or segment (a move across subnets): flows, DNS and BGP follow."""
    body = ({} if ip is None else {"ips": ip}) | ({} if segment is None else
                                                   {"segment": segment})
    row = _call(api, "PATCH", f"/v1/vms/{name}", json=body)
    console.print(_vm_table([row]))


@vm_app.command("rm")
def vm_rm(name: str, api: ApiOpt = "http://127.0.0.1:8080") -> None:
    """Remove a VM (its flows go from every switch)."""
    _call(api, "DELETE", f"/v1/vms/{name}")
    console.print(f"removed {name}")


@vm_app.command("where")
def vm_where(name: str, api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False) -> None:
    """Where a VM is attached now."""
    loc = _call(api, "GET", f"/v1/vms/{name}/location")
    if as_json:
        console.print_json(json.dumps(loc))
    else:
        console.print(f"{name}: {loc['host']['name']} ({loc['host']['dpid']}) port "
                      f"{loc['port']['number']} {loc['port']['name']} since {loc['since']}")


@vm_app.command("history")
def vm_history(name: str, api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False
               ) -> None:
    """Every place a VM has been (append-only), with each move's convergence time."""
    rows = _call(api, "GET", f"/v1/vms/{name}/history")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    t = Table("host", "port", "since", "until", "how", "convergence ms")
    for h in rows:
        conv = h["convergence_ms"]
        t.add_row(h["host"]["name"], h["port"]["name"], h["since"], h["until"] or "-",
                  h["how"], f"{conv:.1f}" if conv is not None else "-")
    console.print(t)


@net_app.command("segments")
def net_segments(api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False) -> None:
    """Segments: prefixes, gateways and the router that joins each."""
    rows = _call(api, "GET", "/v1/segments")
    console.print_json(json.dumps(rows)) if as_json else console.print(_segment_table(rows))


def _segment_table(rows: list[dict[str, Any]]) -> Table:
    keys = ("name", "tag", "subnet", "gateway", "subnet6", "gateway6", "router")
    t = Table(*keys)
    for r in rows:
        t.add_row(*(str(r.get(k) or "-") for k in keys))
    return t


@net_app.command("routers")
def net_routers(api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False) -> None:
    """Routers: MAC and the segments (with gateways) each joins."""
    rows = _call(api, "GET", "/v1/routers")
    console.print_json(json.dumps(rows)) if as_json else console.print(_router_table(rows))


def _router_table(rows: list[dict[str, Any]]) -> Table:
    t = Table("router", "mac", "segment", "gateway", "gateway6")
    for r in rows:
        for seg in r["segments"]:
            t.add_row(r["name"], r["mac"], seg["name"], seg["gateway"] or "-",
                      seg["gateway6"] or "-")
    return t


@host_app.command("list")
def host_list(api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False) -> None:
    """Switches vfence knows, their host label, flows and flow-mods sent."""
    rows = _call(api, "GET", "/v1/hosts")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    t = Table("name", "dpid", "label", "connected", "flows", "flow-mods sent")
    for h in rows:
        t.add_row(h["name"], h["dpid"], str(h["label"]), "yes" if h["connected"] else "no",
                  str(h["flows"]), str(h["flow_mods_sent"]))
    console.print(t)


@host_app.command("flows")
def host_flows(host: str, api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False,
               table: Annotated[int | None, typer.Option(help="only this table")] = None
               ) -> None:
    """The flows on a switch, read from it now, with counters."""
    rows = _call(api, "GET", f"/v1/hosts/{host}/flows")
    rows = [r for r in rows if table is None or r["table"] == table]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    t = Table("table", "prio", "match", "owner", "packets", "instructions")
    for f in rows:
        m = ",".join(f"{k}={v}" for k, v in f["match"].items()) or "*"
        t.add_row(str(f["table"]), str(f["priority"]), m, f["owner"], str(f["packets"]),
                  json.dumps(f["instructions"]) if f["instructions"] else "drop")
    console.print(t)


@app.command()
def events(
    type_: Annotated[str | None, typer.Option("--type", help="e.g. vm-moved, denied")] = None,
    vm: Annotated[str | None, typer.Option(help="only this VM")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new ones")]
    = False,
    api: ApiOpt = "http://127.0.0.1:8080",
    as_json: JsonOpt = False,
) -> None:
    """The audit trail: bindings, moves, spoofs, denied samples, policy changes."""
    params: dict[str, Any] = {"limit": 1000}
    if type_:
        params["type"] = type_
    if vm:
        params["vm"] = vm
    offset = 0
    while True:
        rows = _call(api, "GET", "/v1/events", params={**params, "offset": offset})
        for e in rows:
            if as_json:
                print(json.dumps(e), flush=True)
            else:
                console.print(f"{e['ts']} [bold]{e['type']}[/bold] vm={e['vm'] or '-'} "
                              f"host={e['host'] or '-'} {json.dumps(e['detail'])}")
        offset += len(rows)
        if not follow:
            return
        time.sleep(1)


@app.command()
def verify(api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False) -> None:
    """Prove isolation over the flows installed on the switches. Exit 0 if every pair is
    isolated, 1 if any is broken, 2 if none is broken but some could not be proved."""
    with console.status("reading every switch's flows and walking the header space"):
        rows = _call(api, "POST", "/v1/verify")
    if as_json:
        console.print_json(json.dumps(rows))
    else:
        for v in rows:
            a, b = v["pair"]
            if v["status"] == "isolated":
                console.print(f"[green]isolated[/green] {a} <-> {b} ({v['explored']} steps)")
            elif v["status"] == "unknown":
                console.print(f"[yellow]UNKNOWN[/yellow] {a} <-> {b}: {escape(v['reason'])}")
            else:
                console.print(f"[bold red]BROKEN[/bold red] {a} <-> {b}; witness:")
                for step in v["witness"]:
                    console.print(f"  {step}")
        if not rows:
            console.print("no isolation pairs in the policy")
    statuses = {v["status"] for v in rows}
    raise typer.Exit(1 if "broken" in statuses else 2 if "unknown" in statuses else 0)


@app.command()
def trace(
    source: Annotated[str, typer.Argument(help="a VM: its name or an address")],
    destination: Annotated[str, typer.Argument(help="a VM (name or address) or an address")],
    protocol: Annotated[str, typer.Option("--proto", help="tcp, udp or icmp")] = "tcp",
    port: Annotated[int | None, typer.Option(help="tcp/udp destination port")] = None,
    established: Annotated[bool, typer.Option(
        "--established", help="as part of an established connection")] = False,
    api: ApiOpt = "http://127.0.0.1:8080", as_json: JsonOpt = False,
) -> None:
    """Why can (or can't) SOURCE reach DESTINATION: one packet walked through the flows
    read from the switches, hop by hop. Exit 0 if delivered, 1 if dropped, 2 otherwise."""
    body = {"source": source, "destination": destination, "protocol": protocol,
            "port": port, "established": established}
    with console.status("reading every switch's flows and walking the packet"):
        r = _call(api, "POST", "/v1/trace", json=body)
    if as_json:
        console.print_json(json.dumps(r))
    else:
        t = Table("switch", "table", "prio", "owner", "band")
        for h in r["hops"]:
            t.add_row(h["switch"], h["table_name"], str(h["priority"]), escape(h["owner"]),
                      h["band"] or "-")
        console.print(t)
        colour = "green" if r["verdict"] == "delivered" else "bold red"
        reached = f" to {', '.join(r['reached'])}" if r["reached"] else ""
        console.print(f"[{colour}]{r['verdict']}[/{colour}]{escape(reached)}")
        if r["reason"]:
            console.print(f"  by {escape(r['reason'])}")
    raise typer.Exit(0 if r["verdict"] == "delivered" else 1 if r["verdict"] == "dropped"
                     else 2)


@app.command()
def lab(
    hosts: Annotated[int, typer.Option(min=1, max=16, help="hypervisor bridges")] = 3,
    vms: Annotated[int, typer.Option(min=1, max=8, help="VMs per hypervisor")] = 2,
    spines: Annotated[int, typer.Option(min=1, max=4, help="fabric switches")] = 2,
    cli: Annotated[bool, typer.Option("--cli", help="stay in Mininet's CLI")] = False,
    database: DbOpt = None,
) -> None:
    """The lab demo: OVS + Mininet datacenter, controller, VMs, reachability table."""
    if os.geteuid() != 0:
        err.print("[red]the lab needs root (Mininet, Open vSwitch)[/red]")
        raise typer.Exit(2)
    from vfence.mininet_topos.demo import run_demo

    ok = run_demo(hosts=hosts, vms_per_host=vms, spines=spines, stay_in_cli=cli,
                  db_url=database or "sqlite:///var/lab.db", console=console)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
