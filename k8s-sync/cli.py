"""`proconsul k8s-sync` and `python -m proconsul.k8s_sync`: run the syncer, or `purge` what it wrote.

Flags are consul-k8s `sync-catalog`'s, written with one dash or two (`-to-k8s=false`, `--to-k8s false`,
`--no-to-k8s`), so an operator's manifests carry over. Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from typing import Any

from .config import NODE_PORT_SYNC_TYPES, Options
from .consul_api import ConsulAPI
from .durations import seconds
from .errors import ConfigError, ConsulError, KubeError, OwnershipError, SyncError

log = logging.getLogger("proconsul.k8s_sync")

BOOL_FLAGS = {
    "to-consul": "Sync Kubernetes Services into the catalog (default true)",
    "to-k8s": "Sync catalog services into Kubernetes (default true)",
    "k8s-default-sync": "Sync every Service unless annotated consul.hashicorp.com/service-sync=false (default true)",
    "add-k8s-namespace-suffix": "Append -<namespace> to service names in the catalog (default false)",
    "sync-clusterip-services": "Sync ClusterIP Services (default true)",
    "sync-lb-services-endpoints": "Sync LoadBalancer Services' endpoints instead of their ingress (default false)",
}
VALUE_FLAGS = {
    "kubeconfig": "kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster)",
    "context": "kubeconfig context to use",
    "http-addr": "the agent's HTTP address (default PROCONSUL_HTTP_ADDR / CONSUL_HTTP_ADDR / 127.0.0.1:8500)",
    "token": "ACL token (or CONSUL_HTTP_TOKEN)",
    "k8s-source-namespace": "only sync Services of this namespace",
    "k8s-write-namespace": "namespace for Services written from the catalog (default default)",
    "consul-domain": "DNS domain of ExternalName targets (default mesh)",
    "k8s-service-prefix": "prefix of Kubernetes Services written from the catalog",
    "consul-service-prefix": "prefix of catalog services written from Kubernetes",
    "node-port-sync-type": f"NodePort addresses: {', '.join(NODE_PORT_SYNC_TYPES)} (default ExternalOnly)",
    "consul-k8s-tag": "tag on every instance this syncer writes; it owns only those (default k8s)",
    "consul-node-name": "the synthetic catalog node this syncer owns (default k8s-sync)",
    "consul-write-interval": "period of a full re-check against the catalog (default 30s)",
    "to-k8s-mode": "externalname (default) or endpoints: ClusterIP Service + EndpointSlices of healthy instances",
    "to-k8s-datacenter": "mirror this federated datacenter's catalog into Kubernetes, through ?dc= "
                         "(default: the agent's own); ExternalName targets become <name>.service.<dc>.<domain>",
    "session-ttl": "TTL of the session that keeps the liveness check passing (default 15s; critical after 2x)",
    "listen": "HOST:PORT of /health, /health/ready and /metrics (default 127.0.0.1:8080; off)",
    "log-level": "trace, debug, info, warn, error (default info)",
}
LIST_FLAGS = {
    "allow-k8s-namespace": "namespace to sync (repeatable; default *)",
    "deny-k8s-namespace": "namespace never to sync (repeatable; beats allow; default kube-system, kube-public)",
}
ALIASES = {"k8s-tag": "consul-k8s-tag"}


def _bool(flag: str) -> Any:
    def parse(text: str) -> bool:
        v = text.strip().lower()
        if v in ("1", "t", "true", "yes"):
            return True
        if v in ("0", "f", "false", "no"):
            return False
        raise argparse.ArgumentTypeError(f"-{flag} takes true or false, not {text!r}")

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)  # one line and exit 1, like every other error


def parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Sync Kubernetes Services and catalog services, both ways, "
                                "as consul-k8s's sync-catalog does. `purge` removes everything this syncer wrote.")
    p.add_argument("command", nargs="?", choices=["run", "purge"], default="run", help="run (default) or purge")
    for flag, help_ in BOOL_FLAGS.items():
        dest = flag.replace("-", "_")
        p.add_argument(f"-{flag}", f"--{flag}", dest=dest, nargs="?", const=True, type=_bool(flag),
                       default=getattr(Options(), dest), help=help_)
        p.add_argument(f"--no-{flag}", dest=dest, action="store_false", help=argparse.SUPPRESS)
    for flag, help_ in VALUE_FLAGS.items():
        names = [f"-{flag}", f"--{flag}"] + [f"--{a}" for a, t in ALIASES.items() if t == flag]
        p.add_argument(*names, dest=flag.replace("-", "_"), default=None, help=help_)
    for flag, help_ in LIST_FLAGS.items():
        p.add_argument(f"-{flag}", f"--{flag}", dest=flag.replace("-", "_"), action="append", default=None,
                       help=help_)
    return p


def options(args: argparse.Namespace) -> Options:
    o = Options()
    for f in dataclasses.fields(Options):
        v = getattr(args, f.name, None)
        if v is not None and f.name not in ("consul_write_interval", "allow_k8s_namespaces", "deny_k8s_namespaces"):
            setattr(o, f.name, v)
    if args.context:
        o.kube_context = args.context
    if args.consul_write_interval:
        o.consul_write_interval = seconds(args.consul_write_interval, "-consul-write-interval")
    if args.session_ttl:
        ttl = seconds(args.session_ttl, "-session-ttl")
        if not 10 <= ttl <= 86400:
            raise ConfigError(f"-session-ttl {args.session_ttl!r} must be between 10s and 24h (Consul's limits)")
    o.allow_k8s_namespaces = list(args.allow_k8s_namespace or [])
    o.deny_k8s_namespaces = list(args.deny_k8s_namespace) if args.deny_k8s_namespace is not None else None
    o.http_addr = o.http_addr or os.environ.get("PROCONSUL_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") \
        or "127.0.0.1:8500"
    o.token = o.token or os.environ.get("CONSUL_HTTP_TOKEN", "")
    o.validate()
    return o


async def kube_client(opts: Options) -> Any:
    """A kubernetes_asyncio ApiClient from the kubeconfig (or the in-cluster service account)."""
    from kubernetes_asyncio import client, config

    try:
        if not opts.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
            return client.ApiClient()
        return await config.new_client_from_config(config_file=opts.kubeconfig or None,
                                                   context=opts.kube_context or None)
    except (config.ConfigException, OSError, ValueError, TypeError) as e:
        raise KubeError(f"cannot load Kubernetes configuration from {opts.kubeconfig or 'the default places'}: "
                        f"{e}") from None


async def run(opts: Options, stop: asyncio.Event | None = None) -> None:
    from .syncer import Syncer

    consul = ConsulAPI(opts.http_addr, opts.token)
    kube = await kube_client(opts)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await Syncer(opts, consul, kube).run(stop)
    finally:
        await consul.close()
        await kube.close()


async def purge(opts: Options) -> tuple[int, int]:
    """Remove what this syncer wrote: its catalog entries and its Kubernetes objects. (catalog, k8s) counts."""
    from . import plan as planmod
    from . import to_k8s
    from .syncer import owner_key

    consul = ConsulAPI(opts.http_addr, opts.token)
    node, tag = opts.consul_node_name, opts.consul_k8s_tag
    try:
        held = await consul.kv_get(owner_key(node))
        if held and held.get("Session") and await consul.session_info(held["Session"]) is not None:
            raise OwnershipError(f"a live syncer owns Consul node {node!r} (session {held['Session']}): stop it "
                                 "before purging, or it writes everything again")
        _, services = await consul.get(f"/v1/catalog/node-services/{node}")
        view = planmod.CatalogView(node=(services or {}).get("Node"),
                                   services={s["ID"]: s for s in (services or {}).get("Services") or []})
        removed = sum(1 for s in view.services.values() if planmod.owned(s, tag))
        for txn in planmod.purge_plan(view, node, tag):
            await consul.txn(txn)
        if view.node is not None and removed < len(view.services):
            await consul.txn([{"Check": {"Verb": "delete", "Check": {"Node": node,
                                                                    "CheckID": planmod.LIVENESS_CHECK_ID}}}])
        await consul.request("DELETE", f"/v1/kv/{owner_key(node)}")
    finally:
        await consul.close()
    deleted = 0
    if opts.to_k8s:
        kube = await kube_client(opts)
        try:
            from kubernetes_asyncio import client

            sel = f"{to_k8s.OWNER_LABEL}={node}"
            core, disc = client.CoreV1Api(kube), client.DiscoveryV1Api(kube)
            for lister, deleter in ((core.list_namespaced_service, core.delete_namespaced_service),
                                    (disc.list_namespaced_endpoint_slice, disc.delete_namespaced_endpoint_slice)):
                items = (await lister(opts.k8s_write_namespace, label_selector=sel)).items
                for item in items:
                    await deleter(item.metadata.name, opts.k8s_write_namespace)
                    deleted += 1
        except (OSError, ValueError) as e:
            raise KubeError(f"purging Kubernetes objects: {e}") from None
        except client.ApiException as e:
            raise KubeError(f"purging Kubernetes objects: {e.status} {e.reason}") from None
        finally:
            await kube.close()
    return removed, deleted


def setup_logging(level: str) -> None:
    levels = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "warning": logging.WARNING, "error": logging.ERROR}
    if level.lower() not in levels:
        raise ConfigError(f"-log-level {level!r} must be one of trace, debug, info, warn, error")
    logging.basicConfig(level=levels[level.lower()], stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] k8s-sync: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if level.lower() != "trace":  # the client library's own chatter only at trace
        logging.getLogger("kubernetes_asyncio").setLevel(logging.WARNING)
        # A kubeconfig that cannot be loaded is our one-line error already ("Config not found: …" said it twice).
        logging.getLogger("kubernetes_asyncio.config").setLevel(logging.ERROR)


def execute(argv: list[str], prog: str = "proconsul k8s-sync") -> int:
    """Parse flags and run; the process exit status. Every error is one line on stderr."""
    try:
        args = parser(prog).parse_args(argv)
        opts = options(args)
        setup_logging(opts.log_level)
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
        if args.command == "purge":
            removed, deleted = asyncio.run(purge(opts))
            print(f"Purged {removed} catalog instance(s) from node {opts.consul_node_name} and {deleted} "
                  f"Kubernetes object(s) from namespace {opts.k8s_write_namespace}")
            return 0
        asyncio.run(run(opts))
        return 0
    except (SyncError, ConsulError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def main() -> None:
    sys.exit(execute(sys.argv[1:], prog="python -m proconsul.k8s_sync"))
