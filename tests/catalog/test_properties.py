"""Property tests: commands survive their wire encoding; snapshot→restore preserves every query."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proconsul.catalog import commands as c
from proconsul.catalog.errors import CatalogError
from proconsul.catalog.queries import QUERIES
from proconsul.catalog.store import StateStore

REPO = Path(__file__).resolve().parents[2]
names = st.sampled_from(["web", "db", "api", "cache"])
nodes = st.sampled_from(["n1", "n2", "n3"])
keys = st.sampled_from(["a", "a/b", "a/c", "b/x", "b/y/z"])
statuses = st.sampled_from(["passing", "warning", "critical"])

register = st.builds(
    lambda n, s, port, tags, st_: c.Register(
        node={"Node": n, "Address": f"10.0.0.{len(n)}", "Meta": {"rack": n[-1]}},
        service={"Service": s, "ID": f"{s}-{n}", "Port": port, "Tags": tags},
        checks=[{"CheckID": f"chk-{s}", "ServiceID": f"{s}-{n}", "Status": st_},
                {"CheckID": "serfHealth", "Status": "passing"}]),
    nodes, names, st.integers(1, 65535), st.lists(st.sampled_from(["v1", "v2", "prod"]), max_size=2, unique=True),
    statuses)
kvop = st.builds(lambda verb, k, v, f, i: c.KVOp(verb=verb, key=k, value=v, flags=f, index=i),
                 st.sampled_from(["set", "cas", "delete", "delete-cas", "delete-tree"]), keys, st.binary(max_size=8),
                 st.integers(0, 5), st.integers(0, 6))
session = st.builds(lambda n, i: c.SessionCreate(session={"ID": f"s{i}", "Node": n}), nodes, st.integers(0, 3))
lock = st.builds(lambda k, i: c.KVOp(verb="lock", key=k, value=b"l", session=f"s{i}"), keys, st.integers(0, 3))
dereg = st.builds(lambda n, s: c.Deregister(node=n, service_id=f"{s}-{n}" if s else ""), nodes,
                  st.one_of(st.none(), names))
table = st.builds(lambda k: c.TableSet(table="config_entries", key=f"service-defaults/{k}",
                                       row={"Kind": "service-defaults", "Name": k}), names)
prepared = st.builds(
    lambda i, name, svc, tpl, sess: c.TableSet(table="prepared_queries", key=f"q{i}", row={
        "ID": f"q{i}", "Name": name, "Session": f"s{sess}" if sess is not None else "",
        "Template": {"Type": "name_prefix_match" if tpl else "", "Regexp": "^(w)(.*)$" if tpl else ""},
        "Service": {"Service": svc, "OnlyPassing": i % 2 == 0, "Tags": ["v1"] if i == 3 else None},
        "DNS": {"TTL": ""}}),
    st.integers(0, 3), st.sampled_from(["", "w", "web", "dbq"]), st.sampled_from(["web", "db", "${name.full}",
                                                                                 "${match(2)}"]),
    st.booleans(), st.one_of(st.none(), st.integers(0, 3)))
coordinate = st.builds(lambda n, x: c.TableSet(table="coordinates", key=n, row={
    "Node": n, "Segment": "", "Coord": {"Vec": [x] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}}),
    nodes, st.floats(-1, 1))
commands = st.one_of(register, kvop, session, lock, dereg, table, prepared, coordinate)


@given(commands)
def test_every_command_round_trips_through_msgpack(cmd: c.Command) -> None:
    assert c.decode(c.encode(cmd)) == cmd


def query_args(store: StateStore) -> list[tuple[str, dict]]:
    out = []
    for name in ("web", "db", "api", "cache", "missing"):
        out += [("catalog.service", {"name": name}), ("catalog.service", {"name": name, "tags": ["v1"]}),
                ("health.service", {"name": name, "passing": True}), ("health.service", {"name": name}),
                ("health.checks", {"name": name}), ("catalog.service", {"name": name, "connect": True}),
                ("health.connect", {"name": name, "passing": True})]
    for n in ("n1", "n2", "n3", "nx"):
        out += [("catalog.node", {"node": n}), ("catalog.node_services", {"node": n}), ("health.node", {"node": n}),
                ("session.node", {"node": n})]
    for k in ("", "a", "a/", "b/", "zz"):
        out += [("kv.get", {"key": k}), ("kv.list", {"key": k}), ("kv.keys", {"key": k, "separator": "/"})]
    for state in ("any", "passing", "critical"):
        out.append(("health.state", {"state": state}))
    out += [("catalog.nodes", {}), ("catalog.nodes", {"node_meta": [["rack", "1"]]}), ("catalog.services", {}),
            ("catalog.services", {"node_meta": [["rack", "2"]]}), ("session.list", {}),
            ("config.list", {"kind": "service-defaults"}), ("config.get", {"kind": "service-defaults", "name": "web"}),
            ("connect.roots", {}), ("catalog.gateway_services", {"gateway": "gw"}),
            ("health.ingress", {"name": "web"}), ("ui.services", {}), ("ui.services", {"names": ["web", "Missing"]}),
            ("ui.nodes", {}), ("ui.node", {"node": "n1"}), ("ui.node", {"node": "nx"}),
            ("ui.topology", {"name": "web", "also": ["db"]})]
    for i in range(4):
        out += [("session.info", {"id": f"s{i}"}), ("query.get", {"id": f"q{i}"})]
    for name in ("web", "w", "webby", "db", "dbq", "q1", "missing"):
        out += [("query.execute", {"query": name}), ("query.explain", {"query": name})]
    out += [("query.list", {}), ("coordinate.nodes", {}), ("coordinate.node", {"node": "N1"})]
    out += [("query.execute_definition", {"definition": {"Service": {"Service": svc, "OnlyPassing": passing}}})
            for svc in ("web", "db", "missing") for passing in (False, True)]
    out += [("txn.read", {"ops": [{"Verb": "get-tree", "Key": "a"}, {"Verb": "check-index", "Key": "a/b", "Index": 3},
                                  {"Kind": "Node", "Verb": "get", "Node": {"Node": "n1"}},
                                  {"Kind": "Service", "Verb": "get", "Node": "n2", "Service": {"ID": "web-n2"}}]})]
    out += [("acl.token_bundle", {"secret": "anonymous"}), ("acl.token_bundle", {"accessor": "nope"})]
    assert {q for q, _ in out} >= set(QUERIES) - {"table.list", "table.get"}, "a query is not covered"
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(commands, max_size=40))
def test_snapshot_restore_preserves_every_query(cmds: list[c.Command]) -> None:
    s = StateStore()
    for i, cmd in enumerate(cmds, start=1):
        try:
            s.apply(i, cmd)
        except CatalogError:
            pass
    restored = StateStore()
    restored.restore(s.snapshot())
    assert restored.last_index == s.last_index
    for name, args in query_args(s):
        assert run(name, restored, args) == run(name, s, args), (name, args)


def run(name: str, store: StateStore, args: dict) -> object:
    try:
        return QUERIES[name].run(store, args)
    except CatalogError as e:  # a query that refuses (an unknown prepared query) must refuse the same way
        return type(e).__name__, str(e)


def test_pure_cores_do_not_touch_clocks_randomness_or_io() -> None:
    """TigerBeetle's rule (DESIGN.md §6): catalog/ and consensus/ import no clock, RNG or I/O module."""
    banned = {"time", "random", "datetime", "socket", "asyncio", "os", "threading", "subprocess"}
    offenders = []
    for folder in ("catalog", "consensus"):
        for path in (REPO / folder).glob("*.py"):
            if folder == "consensus" and path.name in ("storage.py", "transport.py", "node.py", "sim.py"):
                continue  # the I/O shells around the pure Raft core, and the seeded simulator
            for node in ast.walk(ast.parse(path.read_text())):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods = [node.module.split(".")[0]]
                offenders += [f"{path.name}: {m}" for m in mods if m in banned]
    assert not offenders, offenders
