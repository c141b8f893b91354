"""The ``vfence`` command line. ``serve`` runs the controller; the rest talk to it over REST
(or, for ``db``, to the database directly). Exit codes: 0 ok, 1 failed, 2 bad usage."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from .errors import VfenceError
from .store import db

app = typer.Typer(help="vfence: secure per-port switching for virtual networks",
                  no_args_is_help=True)
db_app = typer.Typer(help="database schema", no_args_is_help=True)
policy_app = typer.Typer(help="isolation policy documents", no_args_is_help=True)
vm_app = typer.Typer(help="virtual machines", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(vm_app, name="vm")
app.add_typer(policy_app, name="policy")
console = Console()
err = Console(stderr=True)

DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL [env VFENCE_DB]")]
ApiOpt = Annotated[
    str, typer.Option("--api", envvar="VFENCE_API", help="controller REST base URL")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def serve(
    database: DbOpt = None,
    ofp_port: Annotated[int, typer.Option(min=1, max=65535, help="OpenFlow port")] = 6653,
    ofp_host: Annotated[str, typer.Option(help="OpenFlow listen address")] = "0.0.0.0",
    api_port: Annotated[int, typer.Option(min=1, max=65535, help="REST port")] = 8080,
    api_host: Annotated[str, typer.Option(help="REST listen address")] = "127.0.0.1",
    ovsdb: Annotated[
        list[str] | None,
        typer.Option(help="OVSDB remote to watch for VM ports (repeatable), "
                          "e.g. unix:/var/run/openvswitch/db.sock"),
    ] = None,
    learn_first_frame: Annotated[
        bool, typer.Option(help="bind a registered VM on the first frame from an unbound port "
                                "(all hosts)")
    ] = False,
    learn_first_frame_on: Annotated[
        list[str] | None, typer.Option(help="the same, on this host (bridge name; repeatable)")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="policy document (YAML/JSON) to apply at start")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the controller: OpenFlow 1.3, REST API and OVSDB monitors."""
    _setup_logging(log_level)
    from apps.runner import ServeOptions, run  # os-ken only when serving

    from .service import Service

    doc = _load_policy_or_exit(policy) if policy else None
    url = db.resolve_url(database)
    engine = db.make_engine(url)
    db.upgrade(engine)
    learn: bool | frozenset[str] = learn_first_frame or frozenset(learn_first_frame_on or [])
    service = Service(db.sessions(engine), learn_first_frame=learn)
    if doc is not None:
        try:
            service.apply_policy(doc)
        except VfenceError as e:
            _print_errors(getattr(e, "errors", None) or [{"field": e.field or "", "reason":
                                                           e.reason}])
            raise typer.Exit(2) from None
    run(service, ServeOptions(ofp_host, ofp_port, api_host, api_port, list(ovsdb or [])))


@db_app.command("upgrade")
def db_upgrade(database: DbOpt = None) -> None:
    """Create or upgrade the schema (Alembic) at the database URL."""
    url = db.resolve_url(database)
    db.upgrade(db.make_engine(url))
    console.print(f"schema at head: {url}")


# --- policy -------------------------------------------------------------------------------


def _print_errors(errors: list[dict[str, str]]) -> None:
    for e in errors:
        err.print(f"[red]{e['field']}[/red]: {e['reason']}")


def _load_policy_or_exit(path: str) -> dict[str, Any]:
    from . import policy as policy_mod

    try:
        doc = policy_mod.load_file(path)
        policy_mod.parse(doc)
    except policy_mod.PolicyError as e:
        err.print(f"[red]{path}: {len(e.errors)} problem(s)[/red]")
        _print_errors(e.errors)
        raise typer.Exit(1) from None
    return doc


@policy_app.command("check")
def policy_check(file: str, as_json: JsonOpt = False) -> None:
    """Validate a policy document offline (no controller needed)."""
    from . import policy as policy_mod

    doc = _load_policy_or_exit(file)
    p = policy_mod.parse(doc)
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
    doc = _load_policy_or_exit(file)
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
    try:
        r = httpx.request(method, api.rstrip("/") + path, timeout=30, **kw)
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
    from mininet_topos.demo import run_demo

    ok = run_demo(hosts=hosts, vms_per_host=vms, spines=spines, stay_in_cli=cli,
                  db_url=database or "sqlite:///var/lab.db", console=console)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
