"""`/v1/agent/self`, `/v1/agent/host` and `/v1/agent/version` bodies in Consul's shapes.

Client libraries read these: `Stats.consul.leader_addr` to find the leader, `Config.Datacenter`,
`Member`, `Meta`, `xDS` to decide whether Envoy can be used. Every Stats value is a string, as
Consul's are.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import Any

from proconsul.agent.version import CONSUL_COMPAT_VERSION, VERSION

# Consul's raft stats keys ← ours.
RAFT_KEYS = {"state": "state", "term": "term", "last_log_index": "last_log_index",
             "commit_index": "commit_index", "applied_index": "applied_index",
             "last_snapshot_index": "last_snapshot_index", "num_peers": "num_peers"}


def _raft(agent: Any) -> dict[str, str]:
    raft = agent.cluster.raft
    if raft is None or raft.core is None:
        return {}
    st = raft.stats()
    out = {k: str(st[ours]) for k, ours in RAFT_KEYS.items()}
    out["state"] = {"leader": "Leader", "follower": "Follower", "candidate": "Candidate",
                    "precandidate": "Candidate"}.get(str(st["state"]), str(st["state"]).capitalize())
    lc = st.get("last_contact")
    out["last_contact"] = "0" if st["state"] == "leader" or lc in (None, float("inf")) else f"{lc * 1000:.0f}ms"
    out.update({"protocol_version": "3", "protocol_version_min": "0", "protocol_version_max": "3",
                "snapshot_version": "1", "snapshot_version_min": "0", "snapshot_version_max": "1",
                "fsm_pending": "0", "latest_configuration_index": str(st["commit_index"])})
    out["latest_configuration"] = str([{"Suffrage": "Voter" if s.voter else "Nonvoter", "ID": s.id,
                                        "Address": s.address} for s in raft.configuration()])
    return out


def _consul(agent: Any) -> dict[str, str]:
    cfg = agent.config
    if not cfg.server:
        servers = [m for m in agent.cluster.members.alive(servers_only=True)]
        return {"acl": "disabled", "known_servers": str(len(servers))}
    return {"acl": "disabled", "bootstrap": str(cfg.bootstrap_expect == 1 and not cfg.dev).lower(),
            "known_datacenters": str(len(agent.cluster.router.datacenters()) if agent.cluster.router else 1), "leader": str(agent.is_leader()).lower(),
            "leader_addr": agent.cluster.leader_address(), "server": "true"}


def _serf_lan(agent: Any) -> dict[str, str]:
    rows = agent.members()
    stats = agent.cluster.lan.core.stats
    count = {s: sum(1 for r in rows if r["Status"] == code) for s, code in (("alive", 1), ("left", 3), ("failed", 4))}
    return {"members": str(len(rows)), "failed": str(count["failed"]), "left": str(count["left"]),
            "health_score": "0", "encrypted": str(agent.cluster.keys.enabled).lower(), "event_queue": "0",
            "event_time": "1",
            "intent_queue": "0", "member_time": "1", "query_queue": "0", "query_time": "1",
            # Ours: gossip frames dropped because they did not open (wrong key) or were plaintext, and
            # packets and connections from outside serf_lan_allowed_cidrs.
            **{k: str(stats.get(k, 0)) for k in ("dropped_key", "dropped_plaintext", "dropped_encrypted",
                                                 "dropped_cidr")}}


def self_body(agent: Any) -> dict[str, Any]:
    cfg = agent.config
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "Config": {"Datacenter": cfg.datacenter, "PrimaryDatacenter": cfg.primary_datacenter or cfg.datacenter,
                   "NodeName": cfg.node_name, "NodeID": cfg.node_id, "Server": cfg.server, "Revision": "proconsul",
                   "Version": CONSUL_COMPAT_VERSION, "BuildDate": "", "ProconsulVersion": VERSION},
        "DebugConfig": {"Datacenter": cfg.datacenter, "PrimaryDatacenter": cfg.primary_datacenter or cfg.datacenter,
                        "NodeName": cfg.node_name, "NodeID": cfg.node_id, "ServerMode": cfg.server,
                        "DevMode": cfg.dev, "DNSDomain": cfg.domain, "DNSAltDomain": cfg.alt_domain,
                        "DNSPort": cfg.dns_port, "HTTPPort": cfg.http_port, "HTTPSPort": cfg.https_port,
                        "GRPCPort": cfg.grpc_port, "ServerPort": cfg.server_port, "SerfPortLAN": cfg.serf_lan_port,
                        "SerfPortWAN": cfg.serf_wan_port, "ClientAddrs": [cfg.client_addr], "BindAddr": cfg.bind_addr,
                        "AdvertiseAddrLAN": cfg.advertise, "AdvertiseAddrWAN": cfg.advertise_addr_wan or cfg.advertise,
                        "DataDir": cfg.data_dir, "EnableScriptChecks": cfg.enable_script_checks,
                        "EnableLocalScriptChecks": cfg.enable_local_script_checks, "ConnectEnabled": cfg.connect_enabled,
                        "UIConfig": {"Enabled": cfg.ui_enabled, "ContentPath": cfg.ui_content_path},
                        "DefaultIntentionPolicy": "allow" if cfg.intention_default_allow else "deny",
                        "LogLevel": cfg.log_level.upper(), "LogJSON": cfg.log_json, "NodeMeta": dict(cfg.node_meta),
                        "RetryJoinLAN": list(cfg.retry_join), "BootstrapExpect": cfg.bootstrap_expect,
                        "TranslateWANAddrs": cfg.translate_wan_addrs,
                        "ACLsEnabled": False, "RaftProtocol": 3, "Revision": "proconsul",
                        "Version": CONSUL_COMPAT_VERSION},
        "Coord": agent.cluster.lan.coordinates.coord.to_json(),  # measured from the LAN probes
        "Member": next(r for r in agent.members() if r["Name"] == cfg.node_name),
        "Stats": {
            "agent": {"check_monitors": "0", "check_ttls": str(sum(1 for c in agent.local.checks().values()
                                                                   if c.get("Type") == "ttl")),
                      "checks": str(len(agent.local.checks())), "services": str(len(agent.local.services()))},
            "build": {"version": CONSUL_COMPAT_VERSION, "prerelease": "", "revision": "proconsul",
                      "proconsul_version": VERSION},
            "consul": _consul(agent),
            "raft": _raft(agent),
            "serf_lan": _serf_lan(agent),
            "runtime": {"arch": platform.machine(), "os": sys.platform, "version": platform.python_version(),
                        "cpu_count": str(os.cpu_count() or 1), "max_procs": str(os.cpu_count() or 1),
                        "goroutines": "0", "max_rss_kb": str(usage.ru_maxrss)},
        },
        "Meta": dict(cfg.node_meta),
        # No xDS server: the built-in proxy reads the HTTP API. Clients that look for Envoy see none.
        "xDS": {"SupportedProxies": {"envoy": []}, "Port": -1, "Ports": {"Plaintext": -1, "TLS": -1}},
    }


def version_body() -> dict[str, Any]:
    return {"SCADA": "", "HumanVersion": CONSUL_COMPAT_VERSION, "BuildDate": "", "Revision": "proconsul", "FIPS": "",
            "ProconsulVersion": VERSION}


def host_body() -> dict[str, Any]:
    """Consul's /v1/agent/host: memory, CPU, host and disk facts (gopsutil's field names), from /proc."""
    mem = _meminfo()
    uname = os.uname()
    total, free = _disk("/")
    boot = _boot_time()
    return {
        "Memory": {"total": mem.get("MemTotal", 0), "available": mem.get("MemAvailable", 0),
                   "used": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0), "free": mem.get("MemFree", 0),
                   "usedPercent": round(100 * (1 - mem.get("MemAvailable", 0) / max(1, mem.get("MemTotal", 1))), 2)},
        "CPU": [{"cpu": i, "modelName": _cpu_model(), "cores": 1} for i in range(os.cpu_count() or 1)],
        "Host": {"hostname": uname.nodename, "os": sys.platform, "platform": platform.system().lower(),
                 "kernelVersion": uname.release, "kernelArch": uname.machine, "bootTime": boot,
                 "uptime": int(time.time() - boot) if boot else 0},
        "Disk": {"path": "/", "total": total, "free": free, "used": total - free,
                 "usedPercent": round(100 * (total - free) / total, 2) if total else 0.0},
        "CollectionTime": int(time.time() * 1e9),
        "Errors": None,
    }


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[k] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return out


def _disk(path: str) -> tuple[int, int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _boot_time() -> int:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
