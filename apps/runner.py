"""Starts the whole controller in one process: os-ken (OpenFlow), the REST API
(uvicorn thread) and the OVSDB monitors, with a clean shutdown on SIGTERM/SIGINT.

os-ken 4.x runs on native threads and ignores SIGTERM by itself, and ships no
``osken-manager``: we parse its config with explicit ``args`` and drive AppManager.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field

import uvicorn
from os_ken import cfg
from os_ken.base.app_manager import AppManager

from vfence.controller.console import create_web_app
from vfence.controller.hosts import HostDb
from vfence.controller.service import Service

from .ovsdb import Monitor
from .vfence_app import VfenceApp

LOG = logging.getLogger("vfence.runner")


@dataclass
class ServeOptions:
    ofp_host: str = "0.0.0.0"
    ofp_port: int = 6653
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    ovsdb: list[str] = field(default_factory=list)
    api_token: str | None = None
    api_cert: str | None = None  # TLS for the REST API
    api_key: str | None = None
    ofp_cert: str | None = None  # TLS for OpenFlow (os-ken's ctl-cert/ctl-privkey/ca-certs)
    ofp_key: str | None = None
    ofp_ca: str | None = None


def start_openflow(service: Service, host: str, port: int, tls: tuple[str, ...] = ()
                   ) -> VfenceApp:
    """Start os-ken's OpenFlow server and the vfence app (returns at once). ``tls``:
    (cert, key, ca) switches the listener to TLS with client certificates."""
    args = [f"--ofp-listen-host={host}"]
    if tls:
        cert, key, ca = tls
        args += [f"--ofp-ssl-listen-port={port}", f"--ctl-cert={cert}", f"--ctl-privkey={key}",
                 f"--ca-certs={ca}"]
    else:
        args.append(f"--ofp-tcp-listen-port={port}")
    cfg.CONF(args=args, project="os_ken")
    manager = AppManager.get_instance()
    manager.load_apps(["vfence.apps.vfence_app", "os_ken.controller.ofp_handler"])
    contexts = manager.create_contexts()
    manager.instantiate_apps(vfence_service=service, **contexts)
    return next(a for a in manager.applications.values() if isinstance(a, VfenceApp))


def run(service: Service, opts: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT."""
    tls = (opts.ofp_cert, opts.ofp_key, opts.ofp_ca)
    app = start_openflow(service, opts.ofp_host, opts.ofp_port,
                         tls if all(tls) else ())  # type: ignore[arg-type]
    manager = AppManager.get_instance()

    def on_snapshot(db: HostDb) -> None:
        app.submit(service.ovsdb_snapshot, list(db.interfaces), db.bridges, db.remote, db.host,
                   db.override)

    service.hosts.expect_names = bool(opts.ovsdb)
    monitors = [Monitor(spec, on_snapshot) for spec in opts.ovsdb]
    for m in monitors:
        m.start()

    server = uvicorn.Server(uvicorn.Config(
        create_web_app(service, opts.api_token), host=opts.api_host, port=opts.api_port,
        log_level="warning", access_log=False,  # never log request headers (tokens)
        ssl_certfile=opts.api_cert, ssl_keyfile=opts.api_key,
    ))
    api = threading.Thread(target=server.run, name="api", daemon=True)
    api.start()

    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        LOG.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    LOG.info("vfence serving: OpenFlow %s:%d, API http://%s:%d", opts.ofp_host, opts.ofp_port,
             opts.api_host, opts.api_port)
    try:
        while not stop.wait(0.5):
            if not api.is_alive():
                LOG.error("API server stopped (port %d in use?)", opts.api_port)
                break
    finally:
        for m in monitors:
            m.stop()
        server.should_exit = True
        closer = threading.Thread(target=manager.close, daemon=True)
        closer.start()
        closer.join(5)
        api.join(5)
        logging.shutdown()
        # os-ken's native threads (OpenFlow accept loop, per-switch readers) cannot be
        # killed or joined; every write is already committed, so leave now.
        os._exit(0)
