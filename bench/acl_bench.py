"""HTTP reads with ACLs on (a token with a few policies) vs ACLs off, and HTTPS vs HTTP, in one run.

Issue 14's figures: `GET /v1/health/service/web?passing` (50 instances), `wrk -t1 -c16`, arms alternated,
medians, and the agent's CPU seconds per 1,000 requests. Arms:
- ACLs off, HTTP (the reference);
- ACLs on (default deny), a token with four policies that reads every service and node (no filtering:
  the common case for an application's token); goal ≥ 0.9× the reference;
- ACLs on, a token that reads only some nodes (every answer is filtered, so no encoded-response cache);
- ACLs off, HTTPS (TLS 1.3, keep-alive; certificates made by openssl) — the ratio is reported.

With `--client-agent`: the cost of the servers' RPC token check. Two clusters of one server and one client
agent, ACLs off and ACLs on (default deny, the client with an agent token); the same read and a KV write
through the client agent, which forwards each with the caller's token to the server, which checks it. CPU
per 1,000 requests is the server's and the client's together.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common import AgentProcess, Arm, CpuMeter, alternate, free_port, need, report, wait_for, wrk
from http_bench import seed

MGMT = "bench-management"
POLICIES = {
    "svc-read": 'service_prefix "" { policy = "read" }',
    "node-read": 'node_prefix "" { policy = "read" }',
    "web-write": 'service "web" { policy = "write" }\nkey_prefix "web/" { policy = "write" }',
    "sessions": 'session_prefix "" { policy = "write" }\nevent_prefix "web" { policy = "write" }',
    "some-nodes": 'service_prefix "" { policy = "read" }\nnode_prefix "node-1" { policy = "read" }',
}


def call(method: str, url: str, body: object = None, token: str = "") -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers={"X-Consul-Token": token} if token else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def register_web(url: str, instances: int, token: str) -> None:
    """`instances` passing instances of web, one per node (http_bench.seed, with a token)."""
    for i in range(instances):
        call("PUT", f"{url}/v1/catalog/register", {
            "Node": f"node-{i}", "Address": f"10.0.{i // 250}.{i % 250 + 1}",
            "Service": {"Service": "web", "ID": f"web-{i}", "Port": 8080, "Tags": ["v1"]},
            "Checks": [{"CheckID": f"web-{i}-alive", "Name": "alive", "ServiceID": f"web-{i}", "Status": "passing"}]},
             token)


def certificates(d: Path) -> tuple[Path, Path]:
    need("openssl", "openssl")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def measure(url: str, pid: int, connections: int, duration: float, token: str = "") -> dict[str, float]:
    meter = CpuMeter([pid])
    meter.start()
    r = wrk(url, connections, duration, extra=["-H", f"X-Consul-Token: {token}"] if token else None)
    cpu = meter.stop()
    return {**r.as_dict(), "cpu_s_per_1k": cpu / max(1.0, r.rps * duration) * 1000}


def cluster(t: Path, name: str, acl_hcl: str | None) -> tuple[AgentProcess, AgentProcess]:
    """One server (bootstrap-expect 1) and one client agent that joins it; both with `acl_hcl` if given."""
    extra = ["-hcl", acl_hcl] if acl_hcl else []
    server = AgentProcess(t / f"{name}-s", dev=False, args=["--log-level", "warn", "--server", "--bootstrap-expect",
                                                            "1", "--node", f"{name}-s", "--data-dir",
                                                            str(t / f"{name}-s" / "data"), *extra])
    server.start()
    client = AgentProcess(t / f"{name}-c", dev=False, args=["--log-level", "warn", "--node", f"{name}-c",
                                                            "--data-dir", str(t / f"{name}-c" / "data"),
                                                            "--retry-join", f"127.0.0.1:{server.serf_lan_port}",
                                                            *extra])
    return server, client


def client_agent(args: argparse.Namespace, path: str) -> None:
    acl = 'acl {{ enabled = true default_policy = "deny" tokens {{ {tokens} }} }}'
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        off_s, off_c = cluster(t, "off", None)
        on_s, on_c = cluster(t, "on", acl.format(tokens=f'initial_management = "{MGMT}"'))
        agents = [off_s, off_c, on_s]
        try:
            off_c.start()
            seed(off_s, 50)
            wait_for(lambda: call("GET", f"{on_s.url}/v1/acl/token/self", token=MGMT), message="ACL bootstrap")
            for name, rules in POLICIES.items():
                call("PUT", f"{on_s.url}/v1/acl/policy", {"Name": name, "Rules": rules}, MGMT)
            call("PUT", f"{on_s.url}/v1/acl/policy", {"Name": "on-c", "Rules": 'node "on-c" { policy = "write" }'},
                 MGMT)
            agent_token = call("PUT", f"{on_s.url}/v1/acl/token", {"Policies": [{"Name": "on-c"},
                                                                                {"Name": "svc-read"}]},
                               MGMT)["SecretID"]
            app_token = call("PUT", f"{on_s.url}/v1/acl/token", {"Policies": [{"Name": n} for n in (
                "svc-read", "node-read", "web-write", "sessions")]}, MGMT)["SecretID"]
            on_c.extra_args += ["-hcl", acl.format(tokens=f'agent = "{agent_token}"')]
            on_c.start()
            agents.append(on_c)
            register_web(on_s.url, 50, MGMT)
            wait_for(lambda: len(call("GET", f"{on_c.url}{path}", token=app_token)) == 50, 30,
                     message="the read through the ACL client agent")
            wait_for(lambda: len(call("GET", f"{off_c.url}{path}")) == 50, 30, message="the plain client agent")
            write = "/v1/kv/web/bench"
            put = t / "kv_put.lua"
            put.write_text('wrk.method = "PUT"\nwrk.body = "0123456789abcdefghij"\n')

            def arm(c: AgentProcess, s: AgentProcess, p: str, token: str = "", method: str = "GET"
                    ) -> Callable[[], dict[str, float]]:
                def run() -> dict[str, float]:
                    meter = CpuMeter([s.proc.pid, c.proc.pid])
                    meter.start()
                    extra = ["-H", f"X-Consul-Token: {token}"] if token else None
                    r = wrk(c.url + p, args.connections, args.duration, extra=extra,
                            script=str(put) if method == "PUT" else None)
                    cpu = meter.stop()
                    return {**r.as_dict(), "cpu_s_per_1k": cpu / max(1.0, r.rps * args.duration) * 1000}
                return run

            arms = [Arm("client, ACLs off, read", arm(off_c, off_s, path)),
                    Arm("client, ACLs on, read", arm(on_c, on_s, path, app_token)),
                    Arm("client, ACLs off, KV write", arm(off_c, off_s, write, method="PUT")),
                    Arm("client, ACLs on, KV write", arm(on_c, on_s, write, app_token, "PUT"))]
            alternate(arms, args.rounds)
            out: dict[str, float] = {"connections": args.connections, "duration_s": args.duration,
                                     "rounds": args.rounds}
            for label, a in zip(("read_off", "read_on", "write_off", "write_on"), arms, strict=True):
                out.update({f"{label}_rps": a.median("rps"), f"{label}_p99_ms": a.median("p99_ms"),
                            f"{label}_cpu_s_per_1k": a.median("cpu_s_per_1k"),
                            f"{label}_errors": sum(r["errors"] for r in a.results)})
            out.update(read_ratio=out["read_on_rps"] / out["read_off_rps"],
                       write_ratio=out["write_on_rps"] / out["write_off_rps"])
            out.update(rpc_check_cost())
            report("acl_client_agent", out)
        finally:
            for a in agents:
                a.stop()


def rpc_check_cost(n: int = 200_000) -> dict[str, float]:
    """In process: the CPU of the server's check alone (rpc_acl.RPCGuard) for a KV write and a health read,
    with a resolved token whose rules read everything (no filtering), as the arms above."""
    import asyncio
    import time

    from proconsul.agent.acl.resolver import Resolver
    from proconsul.agent.cluster.rpc_acl import RPCGuard
    from proconsul.catalog import commands as c
    from proconsul.catalog.queries import get_query
    from proconsul.catalog.store import StateStore

    store = StateStore("dc1")
    rules = "\n".join(POLICIES[n] for n in ("svc-read", "node-read", "web-write", "sessions"))
    store.apply_bytes(1, c.encode(c.TableSet(table="acl_policies", key="p", row={"ID": "p", "Name": "p",
                                                                                 "Rules": rules})))
    store.apply_bytes(2, c.encode(c.TableSet(table="acl_tokens", key="a", row={
        "AccessorID": "a", "SecretID": "s", "Policies": [{"ID": "p"}]})))
    bundle = get_query("acl.token_bundle")

    async def remote(secret: str) -> tuple[int, dict]:
        raise AssertionError("a server resolves from its replica")

    resolver = Resolver(default_allow=False, down_policy="extend-cache", datacenter="dc1", token_ttl=30.0,
                        fetch=remote, clock=time.monotonic, wall=time.time,
                        fetch_local=lambda s: bundle.run(store, {"secret": s}))
    guard = RPCGuard(resolver, store)
    calls = {"write": ("catalog.apply", {"cmd": c.encode(c.KVOp(verb="set", key="web/x", value=b"v")), "token": "s"}),
             "read": ("catalog.query", {"name": "health.service", "args": {"name": "web"}, "token": "s"})}

    async def measure() -> dict[str, float]:
        out = {}
        for label, (method, args) in calls.items():
            await guard(method, args)
            t0 = time.process_time()
            for _ in range(n):
                await guard(method, args)
            out[f"rpc_check_{label}_us"] = (time.process_time() - t0) / n * 1e6
        return out

    return asyncio.run(measure())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--client-agent", action="store_true",
                    help="measure the servers' RPC token check: reads and writes through a client agent")
    args = ap.parse_args()
    path = "/v1/health/service/web?passing"
    if args.client_agent:
        client_agent(args, path)
        return

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cert, key = certificates(t)
        https_port = free_port()
        (t / "plain").mkdir()
        (t / "plain" / "tls.json").write_text(json.dumps({"ports": {"https": https_port},
                                                          "tls": {"https": {"cert_file": str(cert),
                                                                            "key_file": str(key)}}}))
        plain = AgentProcess(t / "plain", dev=True, args=["--log-level", "warn", "-config-file",
                                                          str(t / "plain" / "tls.json")])
        acl = AgentProcess(t / "acl", dev=True, args=["--log-level", "warn", "-hcl", 'acl { enabled = true '
                                                      f'default_policy = "deny" tokens {{ initial_management = "{MGMT}" }} }}'])
        plain.start()
        acl.start()
        try:
            seed(plain, 50)
            wait_for(lambda: call("GET", f"{acl.url}/v1/acl/token/self", token=MGMT), message="ACL bootstrap")
            register_web(acl.url, 50, MGMT)
            for name, rules in POLICIES.items():
                call("PUT", f"{acl.url}/v1/acl/policy", {"Name": name, "Rules": rules}, MGMT)
            app_token = call("PUT", f"{acl.url}/v1/acl/token", {"Policies": [{"Name": n} for n in (
                "svc-read", "node-read", "web-write", "sessions")]}, MGMT)["SecretID"]
            some_token = call("PUT", f"{acl.url}/v1/acl/token", {"Policies": [{"Name": "some-nodes"}]},
                              MGMT)["SecretID"]
            full = call("GET", f"{acl.url}{path}", token=app_token)
            some = call("GET", f"{acl.url}{path}", token=some_token)
            assert len(full) == 50 and 0 < len(some) < 50, (len(full), len(some))
            arms = [
                Arm("ACLs off, HTTP", lambda: measure(plain.url + path, plain.proc.pid, args.connections,
                                                      args.duration)),
                Arm("ACLs on, 4-policy token", lambda: measure(acl.url + path, acl.proc.pid, args.connections,
                                                               args.duration, app_token)),
                Arm("ACLs on, filtered token", lambda: measure(acl.url + path, acl.proc.pid, args.connections,
                                                               args.duration, some_token)),
                Arm("ACLs off, HTTPS", lambda: measure(f"https://127.0.0.1:{https_port}{path}", plain.proc.pid,
                                                       args.connections, args.duration)),
            ]
            alternate(arms, args.rounds)
            off, on, filtered, tls = arms
            out = {"connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                   "filtered_instances": len(some)}
            for label, arm in (("http", off), ("acl", on), ("acl_filtered", filtered), ("https", tls)):
                out.update({f"{label}_rps": arm.median("rps"), f"{label}_p99_ms": arm.median("p99_ms"),
                            f"{label}_cpu_s_per_1k": arm.median("cpu_s_per_1k"), f"{label}_errors":
                            sum(r["errors"] for r in arm.results)})
            out.update(acl_ratio=on.median("rps") / off.median("rps"), acl_goal=0.9,
                       acl_filtered_ratio=filtered.median("rps") / off.median("rps"),
                       https_ratio=tls.median("rps") / off.median("rps"))
            report("acl", out)
        finally:
            plain.stop()
            acl.stop()


if __name__ == "__main__":
    main()
