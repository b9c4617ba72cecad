"""k8s-sync's pure core: which instances Services call for, the catalog plan, and the Kubernetes plan."""

from __future__ import annotations

from typing import Any

from proconsul.k8s_sync import plan, to_k8s
from proconsul.k8s_sync.config import Options
from proconsul.k8s_sync.to_consul import desired_instances, parse_tags, service_id


def svc(name: str, ns: str = "default", *, type_: str = "ClusterIP", ports: list[dict] | None = None,
        ann: dict[str, str] | None = None, **spec: Any) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "annotations": ann or {}},
            "spec": {"type": type_, "ports": ports if ports is not None else [{"name": "http", "port": 80}], **spec}}


def eps(name: str, ns: str = "default", *, port: int = 8080, endpoints: list[dict]) -> dict:
    return {"metadata": {"name": f"{name}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": endpoints}


def ep(addr: str, ready: bool | None = True, node: str = "", pod: str = "") -> dict:
    out: dict = {"addresses": [addr]}
    if ready is not None:
        out["conditions"] = {"ready": ready}
    if node:
        out["nodeName"] = node
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod}
    return out


def keyed(*objs: dict) -> dict:
    return {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}


def test_clusterip_uses_endpoint_addresses_ports_and_readiness() -> None:
    s = svc("web", ann={"consul.hashicorp.com/service-tags": "v1, blue,,a\\,b",
                        "consul.hashicorp.com/service-meta-team": "payments"})
    out = desired_instances(keyed(s), keyed(eps("web", endpoints=[ep("10.0.0.1", pod="web-1"),
                                                                 ep("10.0.0.2", False, pod="web-2"),
                                                                 ep("10.0.0.3", None)])), {}, Options())
    by_addr = {i.address: i for i in out.values()}
    assert set(by_addr) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    one = by_addr["10.0.0.1"]
    assert one.id == service_id("web", "10.0.0.1") and one.id.startswith("web-") and len(one.id) == 16
    assert (one.service, one.port, one.tags) == ("web", 8080, ("k8s", "v1", "blue", "a,b"))
    meta = dict(one.meta)
    assert meta["external-source"] == "kubernetes" and meta["external-k8s-ns"] == "default"
    assert meta["team"] == "payments" and meta["port-http"] == "80" and meta["external-k8s-ref-name"] == "web-1"
    assert [by_addr[a].ready for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3")] == [True, False, True]
    check = by_addr["10.0.0.2"].check_body("k8s-sync")
    assert check is not None and check["Status"] == "critical"
    assert check["CheckID"] == f"default/{by_addr['10.0.0.2'].id}" and check["Output"] == 'Pod "default/web-2" is not ready'


def test_types_and_annotations_follow_consul_k8s() -> None:
    nodes = keyed({"metadata": {"name": "n1", "namespace": ""}, "status": {"addresses": [
        {"type": "InternalIP", "address": "192.168.0.1"}, {"type": "ExternalIP", "address": "203.0.113.1"}]}},
                  {"metadata": {"name": "n2", "namespace": ""}, "status": {"addresses": [
                      {"type": "InternalIP", "address": "192.168.0.2"}]}})
    np_ = svc("np", type_="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    slices = keyed(eps("np", endpoints=[ep("10.0.1.1", node="n1"), ep("10.0.1.2", node="n2")]))
    got = {i.address: i.port for i in desired_instances(keyed(np_), slices, nodes, Options()).values()}
    assert got == {"203.0.113.1": 30080}  # ExternalOnly: n2 has no external address
    got = {i.address for i in desired_instances(keyed(np_), slices, nodes,
                                                Options(node_port_sync_type="ExternalFirst")).values()}
    assert got == {"203.0.113.1", "192.168.0.2"}
    lb = svc("lb", type_="LoadBalancer", status=None)
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example.com"}]}}
    assert {i.address for i in desired_instances(keyed(lb), {}, {}, Options()).values()} == \
        {"198.51.100.7", "lb.example.com"}
    ext = svc("ext", externalIPs=["198.51.100.9"])
    assert [i.address for i in desired_instances(keyed(ext), {}, {}, Options()).values()] == ["198.51.100.9"]
    en = svc("en", type_="ExternalName", externalName="x.example.com")
    off = svc("off", ann={"consul.hashicorp.com/service-sync": "false"})
    on = svc("on", ann={"consul.hashicorp.com/service-sync": "true", "consul.hashicorp.com/service-name": "renamed",
                        "consul.hashicorp.com/service-port": "8443"})
    sys_ = svc("dns", ns="kube-system")
    all_slices = keyed(*(eps(n, endpoints=[ep(f"10.0.2.{i}")]) for i, n in enumerate(("en", "off", "on", "plain"))),
                       eps("dns", ns="kube-system", endpoints=[ep("10.0.3.1")]))
    services = keyed(en, off, on, svc("plain"), sys_)
    names = sorted(i.service for i in desired_instances(services, all_slices, {}, Options()).values())
    assert names == ["plain", "renamed"]
    assert next(i.port for i in desired_instances(services, all_slices, {}, Options()).values()
                if i.service == "renamed") == 8443
    explicit = desired_instances(services, all_slices, {}, Options(k8s_default_sync=False))
    assert sorted(i.service for i in explicit.values()) == ["renamed"]
    suffixed = desired_instances(services, all_slices, {}, Options(add_k8s_namespace_suffix=True,
                                                                     consul_service_prefix="k-",
                                                                     deny_k8s_namespaces=[]))
    assert sorted(i.service for i in suffixed.values()) == ["k-dns-kube-system", "k-plain-default", "renamed"]
    assert parse_tags(" a ,b\\,c,, ") == ["a", "b,c"]
    mirrored = svc("plain")
    mirrored["metadata"]["labels"] = {"synced-from-consul": "true"}
    assert desired_instances(keyed(mirrored), all_slices, {}, Options()) == {}  # never back into the catalog


def test_plan_writes_nothing_when_the_catalog_already_matches() -> None:
    slices = keyed(eps("web", endpoints=[ep(f"10.0.0.{i}") for i in range(1, 101)]))
    desired = desired_instances(keyed(svc("web")), slices, {}, Options())
    first = plan.plan_to_consul(desired, plan.CatalogView(), "k8s-sync", "k8s", "sess", may_reap=True)
    assert first.registers == 100 and all(len(t) <= plan.MAX_TXN_OPS for t in first.txns)
    assert len(first.txns) == 2  # node + liveness + 100 × (service, check) = 202 ops → 2 transactions
    view = plan.CatalogView()
    for txn in first.txns:
        for op in txn:
            kind, body = next(iter(op.items()))
            if kind == "Node":
                view.node = body["Node"]
            elif kind == "Service":
                view.services[body["Service"]["ID"]] = dict(body["Service"], Weights={"Passing": 1, "Warning": 1})
            else:
                view.checks[body["Check"]["CheckID"]] = body["Check"]
    again = plan.plan_to_consul(desired, view, "k8s-sync", "k8s", "sess", may_reap=True)
    assert again.empty
    # One endpoint turns unready: one check write, nothing else.
    slices[("default", "web-x")]["endpoints"][5]["conditions"] = {"ready": False}
    flip = plan.plan_to_consul(desired_instances(keyed(svc("web")), slices, {}, Options()), view, "k8s-sync",
                               "k8s", "sess", may_reap=True)
    assert [list(op) for t in flip.txns for op in t] == [["Check"]] and flip.registers == 0


def test_plan_reaps_only_what_it_owns_and_only_once_both_sides_were_listed() -> None:
    view = plan.CatalogView(node={"Node": "k8s-sync", "Address": "127.0.0.1",
                                  "Meta": plan.node_body("k8s-sync", "k8s")["Meta"]},
                            services={"gone": {"ID": "gone", "Service": "old", "Tags": ["k8s"],
                                               "Meta": {"external-source": "kubernetes"}},
                                      "theirs": {"ID": "theirs", "Service": "x", "Tags": ["k8s-other"],
                                                 "Meta": {"external-source": "kubernetes"}},
                                      "manual": {"ID": "manual", "Service": "y", "Tags": ["k8s"], "Meta": {}}},
                            checks={plan.LIVENESS_CHECK_ID: plan.liveness_body("k8s-sync", "s")})
    early = plan.plan_to_consul({}, view, "k8s-sync", "k8s", "s", may_reap=False)
    assert early.empty
    late = plan.plan_to_consul({}, view, "k8s-sync", "k8s", "s", may_reap=True)
    assert late.deregisters == 1
    assert [op["Service"]["Service"]["ID"] for t in late.txns for op in t] == ["gone"]
    purge = plan.purge_plan(view, "k8s-sync", "k8s")
    assert [next(iter(op.values()))["Service"]["ID"] for t in purge for op in t] == ["gone"]  # node stays: not empty


def test_to_k8s_mirrors_foreign_services_and_leaves_others_alone() -> None:
    catalog = {"db": ["primary"], "web": ["k8s"], "consul": [], "Bad_Name.x": [], "pay": ["k8s-b"]}
    healthy = {"db": [("10.9.0.1", 5432), ("10.9.0.2", 5432), ("db.example.com", 5432)]}
    common = {"node": "k8s-sync", "tag": "k8s", "domain": "mesh", "prefix": "", "namespace": "default"}
    ext = to_k8s.desired_objects(catalog, healthy, mode="externalname", **common)
    assert sorted(ext) == [("services", "bad-name-x"), ("services", "db"), ("services", "pay")]
    assert ext[("services", "db")]["spec"] == {"type": "ExternalName", "externalName": "db.service.mesh"}
    eps_ = to_k8s.desired_objects(catalog, healthy, mode="endpoints", **common)
    sl = eps_[("endpointslices", "db-5432")]
    assert [e["addresses"] for e in sl["endpoints"]] == [["10.9.0.1"], ["10.9.0.2"]]
    assert eps_[("services", "db")]["spec"]["ports"][0]["port"] == 5432
    actual = {("services", "db"): dict(ext[("services", "db")]),
              ("services", "old"): {"kind": "Service", "metadata": {"name": "old", "labels": {
                  to_k8s.OWNER_LABEL: "k8s-sync"}}},
              ("services", "mine-not"): {"kind": "Service", "metadata": {"name": "mine-not", "labels": {
                  to_k8s.OWNER_LABEL: "other-node"}}}}
    acts = to_k8s.plan_to_k8s(ext, actual, "k8s-sync", may_reap=True)
    assert sorted(o["metadata"]["name"] for o in acts.create) == ["bad-name-x", "pay"]
    assert acts.update == [] and acts.delete == [("services", "old")]
    assert to_k8s.plan_to_k8s(ext, actual, "k8s-sync", may_reap=False).delete == []
    # Another datacenter's catalog (--to-k8s-datacenter): the target names it; a move between them is an update.
    remote = to_k8s.desired_objects(catalog, healthy, mode="externalname", datacenter="dc1", **common)
    assert remote[("services", "db")]["spec"]["externalName"] == "db.service.dc1.mesh"
    moved = to_k8s.plan_to_k8s(remote, {("services", "db"): ext[("services", "db")]}, "k8s-sync", may_reap=True)
    assert [o["spec"]["externalName"] for o in moved.update] == ["db.service.dc1.mesh"]
