"""`proconsul catalog …`: list datacenters, nodes and services in the catalog."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from proconsul.agent.cli.client import CLIError, Datacenter, Format, HttpAddr
from proconsul.agent.cli.output import check_format, client, fail, print_json, run, table

catalog_app = typer.Typer(help="List datacenters, nodes and services in the catalog.", no_args_is_help=True)


@catalog_app.command("datacenters")
def catalog_datacenters(http_addr: HttpAddr = None, fmt: Format = "table") -> None:
    """List the known datacenters, nearest first."""
    check_format(fmt)

    def body() -> None:
        data = client(http_addr).get("/v1/catalog/datacenters").json()
        if fmt == "json":
            return print_json(data)
        for dc in data:
            typer.echo(dc)

    run(body)


def _node_meta_params(node_meta: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in node_meta or []:
        if ":" not in item and "=" not in item:
            raise fail(f"--node-meta {item!r} must be key=value")
        k, _, v = item.replace("=", ":", 1).partition(":")
        out.append(("node-meta", f"{k}:{v}"))
    return out


@catalog_app.command("nodes")
def catalog_nodes(
    http_addr: HttpAddr = None, datacenter: Datacenter = None, fmt: Format = "table",
    service: Annotated[str, typer.Option("--service", help="Only nodes running this service.")] = "",
    node_meta: Annotated[list[str] | None, typer.Option("--node-meta", help="key=value filter (repeatable).")] = None,
    detailed: Annotated[bool, typer.Option("--detailed", help="Show tagged addresses and metadata.")] = False,
    filter_: Annotated[str, typer.Option("--filter", help="Consul filter expression.")] = "",
) -> None:
    """List nodes in the catalog."""
    check_format(fmt)
    meta = _node_meta_params(node_meta)

    def body() -> None:
        api = client(http_addr, datacenter)
        params: dict[str, Any] = {"filter": filter_ or None}
        path = f"/v1/catalog/service/{service}" if service else "/v1/catalog/nodes"
        url_meta = "&".join(f"node-meta={v}" for _, v in meta)
        data = api.get(path + (("?" + url_meta) if url_meta else ""), params=params).json()
        if service:
            seen: dict[str, dict[str, Any]] = {}
            for sn in data:
                seen.setdefault(sn["Node"], {"Node": sn["Node"], "ID": sn["ID"], "Address": sn["Address"],
                                             "Datacenter": sn["Datacenter"], "TaggedAddresses": sn["TaggedAddresses"],
                                             "Meta": sn["NodeMeta"]})
            data = list(seen.values())
        if fmt == "json":
            return print_json(data)
        cols = ["Node", "ID", "Address", "DC"] + (["TaggedAddresses", "Meta"] if detailed else [])
        rows = []
        for n in data:
            row = [n["Node"], (n.get("ID") or "")[:8] if not detailed else n.get("ID"), n["Address"], n["Datacenter"]]
            if detailed:
                row += [",".join(f"{k}={v}" for k, v in sorted(n["TaggedAddresses"].items())),
                        ",".join(f"{k}={v}" for k, v in sorted(n["Meta"].items()))]
            rows.append(row)
        table(None, cols, rows)

    run(body)


@catalog_app.command("services")
def catalog_services(
    http_addr: HttpAddr = None, datacenter: Datacenter = None, fmt: Format = "table",
    node: Annotated[str, typer.Option("--node", help="Only services on this node.")] = "",
    tags: Annotated[bool, typer.Option("--tags", help="Show each service's tags.")] = False,
    node_meta: Annotated[list[str] | None, typer.Option("--node-meta", help="key=value filter (repeatable).")] = None,
) -> None:
    """List services in the catalog."""
    check_format(fmt)
    meta = _node_meta_params(node_meta)

    def body() -> None:
        api = client(http_addr, datacenter)
        if node:
            resp = api.get(f"/v1/catalog/node/{node}").json()
            if resp is None:
                raise CLIError(f"no node named {node!r} in the catalog")
            data: dict[str, list[str]] = {}
            for svc in resp["Services"].values():
                data.setdefault(svc["Service"], [])
                data[svc["Service"]] = sorted(set(data[svc["Service"]]) | set(svc["Tags"]))
        else:
            url_meta = "&".join(f"node-meta={v}" for _, v in meta)
            data = api.get("/v1/catalog/services" + (("?" + url_meta) if url_meta else "")).json()
        if fmt == "json":
            return print_json(data)
        if tags:
            table(None, ["Service", "Tags"], [[name, ",".join(t)] for name, t in sorted(data.items())])
        else:
            for name in sorted(data):
                typer.echo(name)

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
