"""The Kubernetes API test server, proven by the real kubectl: its output and exit codes are the test.

Run against a real cluster with PROCONSUL_K8S_KUBECONFIG=... (cluster IPs and node ports then come from
that cluster's ranges; the assertions only rely on their shape).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent))

from kube import KubeApi  # noqa: E402
from support import wait_for  # noqa: E402


def service(name: str, port: int = 80, target: int = 8080, *, selector: bool = True) -> str:
    sel = f"  selector: {{app: {name}}}\n" if selector else ""
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\n"
            f"spec:\n{sel}  ports:\n  - port: {port}\n    targetPort: {target}\n")


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_get_namespaces_shows_the_system_ones(kube: KubeApi) -> None:
    res = kube.kubectl("get", "namespaces")
    assert res.returncode == 0, res.stderr
    table = rows(res.stdout)
    assert table[0] == ["NAME", "STATUS", "AGE"]
    names = {r[0]: r[1] for r in table[1:]}
    assert names["default"] == "Active" and "kube-system" in names


def test_apply_creates_then_unchanged_then_configured(kube: KubeApi, ns: str) -> None:
    res = kube.kubectl("apply", "-n", ns, "-f", "-", input=service("web"))
    assert (res.returncode, res.stdout.strip()) == (0, "service/web created"), res.stderr
    res = kube.kubectl("apply", "-n", ns, "-f", "-", input=service("web"))
    assert (res.returncode, res.stdout.strip()) == (0, "service/web unchanged"), res.stderr
    res = kube.kubectl("apply", "-n", ns, "-f", "-", input=service("web", target=9090))
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, "service/web configured", "")
    res = kube.kubectl("get", "-n", ns, "service", "web", "-o", "wide")
    assert res.returncode == 0, res.stderr
    header, row = rows(res.stdout)
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    assert row[0:2] == ["web", "ClusterIP"] and row[3:5] == ["<none>", "80/TCP"] and row[6] == "app=web"
    ipaddress.ip_address(row[2])
    spec = json.loads(kube.kubectl("get", "-n", ns, "svc", "web", "-o", "json", check=True).stdout)["spec"]
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 9090}]
    assert spec["clusterIPs"] == [spec["clusterIP"]] and spec["sessionAffinity"] == "None"


def test_invalid_name_and_unknown_field_are_refused_with_the_servers_words(kube: KubeApi, ns: str) -> None:
    res = kube.kubectl("apply", "-n", ns, "-f", "-", input=service("Bad_Name"))
    assert res.returncode == 1
    assert 'The Service "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a DNS-1035 label' \
        in res.stderr
    bad = service("strict").replace("  ports:", "  portz: []\n  ports:")
    res = kube.kubectl("apply", "-n", ns, "-f", "-", input=bad)
    assert res.returncode == 1
    assert 'strict decoding error: unknown field "spec.portz"' in res.stderr
    res = kube.kubectl("get", "-n", ns, "svc")
    assert res.returncode == 0 and res.stdout == "", (res.stdout, res.stderr)
    assert f"No resources found in {ns} namespace." in res.stderr


def test_cluster_ip_is_immutable_and_node_ports_are_allocated(kube: KubeApi, ns: str) -> None:
    kube.kubectl("apply", "-n", ns, "-f", "-", input=service("web"), check=True)
    ip = kube.kubectl("get", "-n", ns, "svc", "web", "-o", "jsonpath={.spec.clusterIP}", check=True).stdout
    other = str(ipaddress.ip_address(ip) + 1)
    res = kube.kubectl("patch", "-n", ns, "svc", "web", "-p",
                       json.dumps({"spec": {"clusterIP": other, "clusterIPs": [other]}}))
    assert res.returncode == 1 and "may not change once set" in res.stderr, res.stderr
    node = service("np").replace("spec:\n", "spec:\n  type: NodePort\n")
    kube.kubectl("apply", "-n", ns, "-f", "-", input=node, check=True)
    port = int(kube.kubectl("get", "-n", ns, "svc", "np", "-o", "jsonpath={.spec.ports[0].nodePort}",
                            check=True).stdout)
    assert 30000 <= port <= 32767
    out = rows(kube.kubectl("get", "-n", ns, "svc", "np", check=True).stdout)
    assert out[1][4] == f"80:{port}/TCP"
    clash = service("clash").replace("spec:\n", "spec:\n  type: NodePort\n").replace(
        "targetPort: 8080", f"targetPort: 8080\n    nodePort: {port}")
    res = kube.kubectl("apply", "-n", ns, "-f", "-", input=clash)
    assert res.returncode == 1 and "provided port is already allocated" in res.stderr, res.stderr


def test_annotate_describe_and_delete(kube: KubeApi, ns: str) -> None:
    kube.kubectl("apply", "-n", ns, "-f", "-", input=service("api", selector=False), check=True)
    res = kube.kubectl("annotate", "-n", ns, "svc", "api", "consul.hashicorp.com/service-tags=v1,blue")
    assert (res.returncode, res.stdout.strip()) == (0, "service/api annotated"), res.stderr
    res = kube.kubectl("annotate", "-n", ns, "svc", "api", "consul.hashicorp.com/service-tags=v2")
    assert res.returncode == 1 and "--overwrite is false" in res.stderr
    kube.kubectl("annotate", "-n", ns, "--overwrite", "svc", "api", "consul.hashicorp.com/service-tags=v2",
                 check=True)
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "api-1", "labels": {"kubernetes.io/service-name": "api"}},
              "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
              "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}}]}
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(slice_), check=True)
    res = kube.kubectl("describe", "-n", ns, "svc", "api")
    assert res.returncode == 0, res.stderr
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in res.stdout.splitlines()
              if ":" in line and not line.startswith(" ")}
    assert fields["Name"] == "api" and fields["Namespace"] == ns and fields["Type"] == "ClusterIP"
    assert fields["Selector"] == "<none>" and fields["Annotations"] == "consul.hashicorp.com/service-tags: v2"
    assert fields["Port"] == "<unset>  80/TCP" and fields["TargetPort"] == "8080/TCP"
    assert fields["Endpoints"] == "10.1.0.5:8080" and fields["Events"] == "<none>"
    out = rows(kube.kubectl("get", "-n", ns, "endpointslices", check=True).stdout)
    assert out == [["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], ["api-1", "IPv4", "8080", "10.1.0.5",
                                                                          out[1][4]]]
    res = kube.kubectl("delete", "-n", ns, "svc", "api")
    assert res.returncode == 0 and res.stdout.startswith('service "api" deleted'), res
    res = kube.kubectl("get", "-n", ns, "svc", "api")
    assert (res.returncode, res.stderr.strip()) == (1, 'Error from server (NotFound): services "api" not found')


def test_get_watch_prints_each_change(kube: KubeApi, ns: str) -> None:
    kube.kubectl("apply", "-n", ns, "-f", "-", input=service("w0"), check=True)  # listed before the watch
    proc = subprocess.Popen(kube.kubectl_cmd("get", "-n", ns, "svc", "-w", "--output-watch-events"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[list[str]] = []

    def seen(event: str, name: str) -> bool:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line:
            lines.append(line.split())
        return bool(lines) and lines[-1][:2] == [event, name]

    try:
        # Once the listed object is printed, kubectl watches from the list's resourceVersion: every later
        # change is an event, however late its watch request reaches the server.
        wait_for(lambda: seen("ADDED", "w0"), 20, interval=0, message="kubectl get -w to print its list")
        kube.kubectl("apply", "-n", ns, "-f", "-", input=service("w1"), check=True)
        kube.kubectl("annotate", "-n", ns, "svc", "w1", "a=b", check=True)
        kube.kubectl("delete", "-n", ns, "svc", "w1", check=True)
        wait_for(lambda: seen("DELETED", "w1"), 20, interval=0, message="kubectl get -w to print the deletion")
    finally:
        proc.terminate()
        proc.wait(10)
    assert lines[0][:3] == ["EVENT", "NAME", "TYPE"]
    assert [(r[0], r[1]) for r in lines[1:]] == [("ADDED", "w0"), ("ADDED", "w1"), ("MODIFIED", "w1"),
                                                ("DELETED", "w1")]


def test_server_side_apply_and_selectors_and_chunked_lists(kube: KubeApi, ns: str) -> None:
    res = kube.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=service("ssa"))
    assert (res.returncode, res.stdout.strip()) == (0, "service/ssa serverside-applied"), res.stderr
    without_label = service("ssa").replace("  labels: {app: ssa}\n", "")
    kube.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=without_label, check=True)
    labels = kube.kubectl("get", "-n", ns, "svc", "ssa", "-o", "jsonpath={.metadata.labels}", check=True).stdout
    assert labels == "", labels
    for name in ("b1", "b2", "b3"):
        kube.kubectl("apply", "-n", ns, "-f", "-", input=service(name), check=True)
    out = rows(kube.kubectl("get", "-n", ns, "svc", "-l", "app in (b1,b3)", check=True).stdout)
    assert [r[0] for r in out[1:]] == ["b1", "b3"]
    out = rows(kube.kubectl("get", "-n", ns, "svc", "--chunk-size=1", "--field-selector", "metadata.name!=ssa",
                            check=True).stdout)
    assert [r[0] for r in out[1:]] == ["b1", "b2", "b3"]
    res = kube.kubectl("get", "-n", ns, "svc", "-l", "app in (b1")
    assert res.returncode == 1 and "unable to parse requirement" in res.stderr


def test_nodes_endpoints_and_events(kube: KubeApi, ns: str) -> None:
    if not kube.is_test_server:
        pytest.skip("creates a Node, which a real cluster's nodes own")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{ns}", "labels": {
        "node-role.kubernetes.io/worker": ""}}, "status": {
        "addresses": [{"type": "InternalIP", "address": "192.168.7.1"}, {"type": "ExternalIP", "address": "203.0.113.7"}],
        "conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.37.0"}}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(node), check=True)
    try:
        out = rows(kube.kubectl("get", "node", f"node-{ns}", "-o", "wide", check=True).stdout)
        assert out[0][:7] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP"]
        assert out[1][:3] == [f"node-{ns}", "Ready", "worker"] and out[1][4:7] == ["v1.37.0", "192.168.7.1",
                                                                                  "203.0.113.7"]
    finally:
        kube.kubectl("delete", "node", f"node-{ns}", check=True)
    ep = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "legacy"},
          "subsets": [{"addresses": [{"ip": f"10.9.0.{i}"} for i in range(1, 6)], "ports": [{"port": 80}]}]}
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(ep), check=True)
    out = rows(kube.kubectl("get", "-n", ns, "endpoints", "legacy", check=True).stdout)
    assert out[1][1:5] == ["10.9.0.1:80,10.9.0.2:80,10.9.0.3:80", "+", "2", "more..."]
    kube.kubectl("apply", "-n", ns, "-f", "-", input=service("ev", selector=False), check=True)
    uid = kube.kubectl("get", "-n", ns, "svc", "ev", "-o", "jsonpath={.metadata.uid}", check=True).stdout
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "ev.1"}, "type": "Warning",
             "reason": "SyncFailed", "message": "could not write the catalog",
             "involvedObject": {"kind": "Service", "name": "ev", "namespace": ns, "uid": uid},
             "source": {"component": "k8s-sync"}, "count": 1}
    kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(event), check=True)
    described = kube.kubectl("describe", "-n", ns, "svc", "ev", check=True).stdout
    assert "SyncFailed" in described and "could not write the catalog" in described
