"""The Kubernetes API test server, proven by the official `kubernetes` Python client: list, watch, patch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

sys.path.append(str(Path(__file__).resolve().parent.parent))

from kube import KubeApi  # noqa: E402


@pytest.fixture
def v1(kube: KubeApi) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(kube.kubeconfig)))


def svc(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"ports": [{"port": 80}]}}


def test_list_pages_are_one_consistent_snapshot(v1: client.CoreV1Api, ns: str) -> None:
    for i in range(5):
        v1.create_namespaced_service(ns, svc(f"s{i}"))
    first = v1.list_namespaced_service(ns, limit=2)
    assert [s.metadata.name for s in first.items] == ["s0", "s1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    v1.delete_namespaced_service("s3", ns)  # after the first page: the next pages still show the snapshot
    v1.create_namespaced_service(ns, svc("s5"))
    second = v1.list_namespaced_service(ns, limit=2, _continue=first.metadata._continue)
    third = v1.list_namespaced_service(ns, limit=2, _continue=second.metadata._continue)
    assert [s.metadata.name for s in second.items + third.items] == ["s2", "s3", "s4"]
    assert not third.metadata._continue
    assert second.metadata.resource_version == first.metadata.resource_version
    now = v1.list_namespaced_service(ns)
    assert [s.metadata.name for s in now.items] == ["s0", "s1", "s2", "s4", "s5"]
    assert int(now.metadata.resource_version) > int(first.metadata.resource_version)


def test_watch_from_a_resource_version_sees_every_change_in_order(v1: client.CoreV1Api, ns: str) -> None:
    rv = v1.list_namespaced_service(ns).metadata.resource_version
    v1.create_namespaced_service(ns, svc("a", {"tier": "web"}))
    v1.patch_namespaced_service("a", ns, {"metadata": {"annotations": {"x": "1"}}})
    v1.patch_namespaced_service("a", ns, {"metadata": {"labels": {"tier": "db"}}})  # leaves the selector
    v1.delete_namespaced_service("a", ns)
    events = []
    for ev in watch.Watch().stream(v1.list_namespaced_service, ns, resource_version=rv, timeout_seconds=1):
        events.append((ev["type"], ev["object"].metadata.name, ev["object"].metadata.resource_version))
    assert [e[0] for e in events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert [int(e[2]) for e in events] == sorted(int(e[2]) for e in events)
    seen = [ev["type"] for ev in watch.Watch().stream(v1.list_namespaced_service, ns, resource_version=rv,
                                                      label_selector="tier=web", timeout_seconds=1)]
    assert seen == ["ADDED", "MODIFIED", "DELETED"]  # the label change reads as a deletion through the selector


def test_watch_sends_bookmarks_when_asked(kube: KubeApi, v1: client.CoreV1Api, ns: str) -> None:
    if not kube.is_test_server:
        pytest.skip("a real API server sends bookmarks about once a minute; too slow for this test")
    rv = v1.list_namespaced_service(ns).metadata.resource_version
    types = [ev["type"] for ev in watch.Watch().stream(v1.list_namespaced_service, ns, resource_version=rv,
                                                       allow_watch_bookmarks=True, timeout_seconds=2)]
    assert types and set(types) == {"BOOKMARK"}


def test_a_compacted_resource_version_is_410_expired(kube: KubeApi, v1: client.CoreV1Api, ns: str) -> None:
    if not kube.is_test_server:
        pytest.skip("needs the test server's compaction hook")
    rv = v1.list_namespaced_service(ns).metadata.resource_version
    v1.create_namespaced_service(ns, svc("b"))
    kube.hook("compact")
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(v1.list_namespaced_service, ns, resource_version=rv, timeout_seconds=1))
    assert info.value.status == 410
    v1.create_namespaced_service(ns, svc("c"))
    first = v1.list_namespaced_service(ns, limit=1)
    assert first.metadata._continue
    v1.create_namespaced_service(ns, svc("d"))
    kube.hook("compact")
    with pytest.raises(ApiException) as info:
        v1.list_namespaced_service(ns, limit=1, _continue=first.metadata._continue)
    assert info.value.status == 410


def test_patch_types_and_field_selectors(v1: client.CoreV1Api, ns: str) -> None:
    v1.create_namespaced_service(ns, {"metadata": {"name": "p"}, "spec": {"ports": [
        {"name": "http", "port": 80}, {"name": "grpc", "port": 9090}]}})
    # strategic merge: ports merge by port number
    out = v1.patch_namespaced_service("p", ns, {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}},
                                      _content_type="application/strategic-merge-patch+json")
    assert [(p.port, p.target_port) for p in out.spec.ports] == [(80, 8080), (9090, 9090)]
    # merge patch: lists replace
    out = v1.patch_namespaced_service("p", ns, {"spec": {"ports": [{"name": "http", "port": 81}]}},
                                      _content_type="application/merge-patch+json")
    assert [p.port for p in out.spec.ports] == [81]
    # JSON patch
    out = v1.patch_namespaced_service("p", ns, [{"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}],
                                      _content_type="application/json-patch+json")
    assert out.metadata.labels == {"k": "v"}
    names = [s.metadata.name for s in v1.list_service_for_all_namespaces(field_selector=f"metadata.namespace={ns}",
                                                                        label_selector="k=v").items]
    assert names == ["p"]
    with pytest.raises(ApiException) as info:
        v1.list_namespaced_service(ns, field_selector="spec.nope=1")
    assert info.value.status == 400
