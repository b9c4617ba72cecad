"""Service and check definitions: one normalizer for the HTTP API and for config files.

Consul reads these bodies case-insensitively and also takes snake_case in config files
(`enable_tag_override`, `deregister_critical_service_after`). Here every accepted spelling is
folded into Consul's PascalCase field name, types are checked, and a check's kind is worked out,
so the rest of the agent sees one canonical dict. Errors name the field and what is wrong.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from proconsul.agent.config.duration import DurationError, parse_duration


class DefinitionError(ValueError):
    """A service or check definition is invalid; the message names the field."""


SERVICE_FIELDS = (
    "ID", "Name", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "Kind", "Proxy", "Connect",
    "Weights", "EnableTagOverride", "Check", "Checks", "SocketPath", "Namespace", "Partition", "Token",
    "Locality",
)
CHECK_FIELDS = (
    "ID", "CheckID", "Name", "Notes", "ServiceID", "Status", "Interval", "Timeout", "TTL", "HTTP", "Method",
    "Header", "Body", "DisableRedirects", "TCP", "TCPUseTLS", "UDP", "GRPC", "GRPCUseTLS", "H2PING",
    "H2PingUseTLS", "Args", "ScriptArgs", "Shell", "DockerContainerID", "AliasNode", "AliasService",
    "TLSSkipVerify", "TLSServerName", "DeregisterCriticalServiceAfter", "SuccessBeforePassing",
    "FailuresBeforeWarning", "FailuresBeforeCritical", "OutputMaxSize", "OSService", "Namespace", "Partition",
    "Token", "Definition", "Output", "Type",
)

# The kinds of check, in the order Consul tests for them, with the field that selects each.
CHECK_KINDS = (
    ("script", "Args"), ("http", "HTTP"), ("tcp", "TCP"), ("udp", "UDP"), ("grpc", "GRPC"), ("h2ping", "H2PING"),
    ("ttl", "TTL"), ("docker", "DockerContainerID"), ("alias", "AliasService"), ("alias", "AliasNode"),
    ("os_service", "OSService"),
)
INTERVAL_KINDS = {"script", "http", "tcp", "udp", "grpc", "h2ping", "docker", "os_service"}
# Kinds Consul knows that this agent cannot run: refused at registration rather than left critical forever.
UNSUPPORTED_KINDS = {
    "docker": "Docker checks are not supported by Proconsul; run the command with a script check "
              "(Args: [\"docker\", \"exec\", …]) instead",
    "os_service": "OS service checks are not supported by Proconsul; use a script check "
                  "(Args: [\"systemctl\", \"is-active\", \"--quiet\", …]) instead",
}


def _fold(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _lookup(fields: tuple[str, ...]) -> dict[str, str]:
    table = {_fold(f): f for f in fields}
    table.update({"serviceid": "ServiceID", "checkid": "CheckID", "grpcusetls": "GRPCUseTLS",
                  "tlsskipverify": "TLSSkipVerify", "h2pingusetls": "H2PingUseTLS"})
    return table


_SERVICE_KEYS = _lookup(SERVICE_FIELDS)
_CHECK_KEYS = _lookup(CHECK_FIELDS)
# Service-definition keys whose values are free-form maps: their keys are kept as given.
_OPAQUE = {"Meta", "TaggedAddresses", "Header", "Proxy", "Connect", "Locality", "Definition"}


def canonical(obj: dict[str, Any], table: dict[str, str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = table.get(_fold(str(k)))
        if name is None:
            continue  # like Consul's decoder, unknown fields are ignored
        if name in out and name not in ("ID", "CheckID"):
            raise DefinitionError(f"{what} gives {name} twice (as {k!r})")
        out[name] = v
    return out


def _type(obj: dict[str, Any], name: str, types: tuple[type, ...], what: str, desc: str) -> None:
    v = obj.get(name)
    if v is None:
        return
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise DefinitionError(f"{what}.{name} must be {desc}, got {type(v).__name__} {v!r}")


def _str_map(obj: dict[str, Any], name: str, what: str) -> None:
    v = obj.get(name)
    if v is None:
        return
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise DefinitionError(f"{what}.{name} must be an object of string values")


def service_definition(raw: Any, what: str = "Service") -> dict[str, Any]:
    """Normalize and validate an agent service registration; returns PascalCase fields with its checks
    (each already a normalized check definition) under "Checks"."""
    if not isinstance(raw, dict):
        raise DefinitionError(f"{what} must be a JSON object")
    svc = canonical(raw, _SERVICE_KEYS, what)
    if "Service" in raw and "Name" not in svc:  # the catalog's field name for it
        svc["Name"] = raw["Service"]
    _type(svc, "Name", (str,), what, "a string")
    if not svc.get("Name"):
        raise DefinitionError(f"{what}.Name is missing: a service needs a name")
    _type(svc, "ID", (str,), what, "a string")
    _type(svc, "Address", (str,), what, "a string")
    _type(svc, "Kind", (str,), what, "a string")
    _type(svc, "Port", (int,), what, "a number")
    _type(svc, "EnableTagOverride", (bool,), what, "a boolean")
    for block in ("Proxy", "Connect"):
        if block in svc:
            svc[block] = _single(svc[block])
    _type(svc, "Proxy", (dict,), what, "an object")
    _type(svc, "Connect", (dict,), what, "an object")
    if svc.get("Proxy") is not None:
        svc["Proxy"] = proxy_block(svc["Proxy"], f"{what}.Proxy")
    if svc.get("Connect") is not None:
        svc["Connect"] = connect_block(svc["Connect"], f"{what}.Connect")
    if svc.get("Port") is not None and not 0 <= svc["Port"] <= 65535:
        raise DefinitionError(f"{what}.Port {svc['Port']} is out of range (0-65535)")
    tags = svc.get("Tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise DefinitionError(f"{what}.Tags must be a list of strings")
    _str_map(svc, "Meta", what)
    ta = svc.get("TaggedAddresses")
    if ta is not None:
        if not isinstance(ta, dict):
            raise DefinitionError(f"{what}.TaggedAddresses must be an object")
        for k, v in ta.items():
            if not isinstance(v, dict) or not isinstance(v.get("Address", v.get("address", "")), str):
                raise DefinitionError(f"{what}.TaggedAddresses.{k} must be an object with Address and Port")
            ta[k] = {"Address": v.get("Address", v.get("address", "")), "Port": int(v.get("Port", v.get("port", 0)))}
    weights = svc.get("Weights")
    if weights is not None:
        if not isinstance(weights, dict):
            raise DefinitionError(f"{what}.Weights must be an object with Passing and Warning")
        w = {_fold(k): v for k, v in weights.items()}
        passing, warning = w.get("passing", 1), w.get("warning", 1)
        if not isinstance(passing, int) or not isinstance(warning, int) or passing < 1 or warning < 0:
            raise DefinitionError(f"{what}.Weights.Passing must be a number ≥ 1 and Warning ≥ 0")
        svc["Weights"] = {"Passing": passing, "Warning": warning}
    if svc.get("Kind") == "connect-proxy":
        proxy = svc.get("Proxy") or {}
        if not proxy.get("DestinationServiceName"):
            raise DefinitionError(f"{what}.Proxy.DestinationServiceName is required for a connect-proxy")
        if svc.get("Port") is None and not svc.get("SocketPath"):
            raise DefinitionError(f"{what}.Port is required for a connect-proxy (its public mTLS listener)")
        proxy.setdefault("DestinationServiceID", proxy["DestinationServiceName"])
    elif (svc.get("Connect") or {}).get("SidecarService") is not None and svc.get("Kind"):
        raise DefinitionError(f"{what}.Connect.SidecarService cannot be used with Kind {svc['Kind']!r}")
    svc.setdefault("ID", svc["Name"])
    if not svc["ID"]:
        svc["ID"] = svc["Name"]
    checks: list[dict[str, Any]] = []
    if isinstance(svc.get("Check"), list):  # HCL gives a `check { … }` block as a list of one object
        blocks = svc.pop("Check")
        if len(blocks) == 1:
            svc["Check"] = blocks[0]
        else:
            svc["Checks"] = list(svc.get("Checks") or []) + blocks
    if svc.get("Check") is not None:
        checks.append(check_definition(svc.pop("Check"), f"{what}.Check"))
    else:
        svc.pop("Check", None)
    raw_checks = svc.pop("Checks", None) or []
    if not isinstance(raw_checks, list):
        raise DefinitionError(f"{what}.Checks must be a list of check definitions")
    for i, chk in enumerate(raw_checks):
        checks.append(check_definition(chk, f"{what}.Checks[{i}]"))
    svc["Checks"] = checks
    return svc


def check_definition(raw: Any, what: str = "Check") -> dict[str, Any]:
    """Normalize and validate one check definition; adds "Kind" (http, tcp, ttl, …) and parsed
    "IntervalSeconds"/"TimeoutSeconds"/"TTLSeconds"/"DeregisterAfterSeconds" where given."""
    if not isinstance(raw, dict):
        raise DefinitionError(f"{what} must be a JSON object")
    chk = canonical(raw, _CHECK_KEYS, what)
    if chk.get("ScriptArgs") and not chk.get("Args"):
        chk["Args"] = chk["ScriptArgs"]
    chk.pop("ScriptArgs", None)
    if "ID" in chk and not chk.get("CheckID"):
        chk["CheckID"] = chk["ID"]
    chk.pop("ID", None)
    for name in ("Name", "CheckID", "Notes", "ServiceID", "Status", "HTTP", "Method", "Body", "TCP", "UDP",
                 "GRPC", "H2PING", "DockerContainerID", "AliasNode", "AliasService", "TLSServerName", "Shell"):
        _type(chk, name, (str,), what, "a string")
    for name in ("TLSSkipVerify", "GRPCUseTLS", "H2PingUseTLS", "TCPUseTLS", "DisableRedirects"):
        _type(chk, name, (bool,), what, "a boolean")
    for name in ("SuccessBeforePassing", "FailuresBeforeWarning", "FailuresBeforeCritical", "OutputMaxSize"):
        _type(chk, name, (int,), what, "a whole number")
        if (chk.get(name) or 0) < 0:
            raise DefinitionError(f"{what}.{name} must not be negative")
    args = chk.get("Args")
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args) or not args):
        raise DefinitionError(f"{what}.Args must be a non-empty list of strings (the command and its arguments)")
    header = chk.get("Header")
    if header is not None:
        if not isinstance(header, dict) or not all(
                isinstance(v, list) and all(isinstance(x, str) for x in v) for v in header.values()):
            raise DefinitionError(f"{what}.Header must be an object of header name to a list of strings")
    status = chk.get("Status")
    if status and status not in ("passing", "warning", "critical"):
        raise DefinitionError(f"{what}.Status {status!r} must be passing, warning or critical")
    kinds = [(kind, key) for kind, key in CHECK_KINDS if chk.get(key)]
    if chk.get("DockerContainerID"):  # a Docker check is Args run inside the container
        kinds = [(kind, key) for kind, key in kinds if kind != "script"]
    if chk.get("AliasService") and chk.get("AliasNode"):  # one alias: a service on that node
        kinds = [(kind, key) for kind, key in kinds if key != "AliasNode"]
    if len(kinds) > 1:
        names = ", ".join(key for _, key in kinds)
        raise DefinitionError(f"{what} has more than one check type ({names}); give exactly one")
    if not kinds:
        raise DefinitionError(
            f"{what} has no check type: give one of Args, HTTP, TCP, UDP, GRPC, H2PING, TTL, AliasService, AliasNode")
    kind = kinds[0][0]
    chk["Kind"] = kind
    chk["Type"] = kind
    for name, key in (("Interval", "IntervalSeconds"), ("Timeout", "TimeoutSeconds"), ("TTL", "TTLSeconds"),
                      ("DeregisterCriticalServiceAfter", "DeregisterAfterSeconds")):
        v = chk.get(name)
        if v in (None, ""):
            continue
        try:
            seconds = parse_duration(v) if isinstance(v, str) else parse_duration(v, bare_unit=1e-9)
        except DurationError as e:
            raise DefinitionError(f"{what}.{name}: {e}") from None
        if seconds < 0:
            raise DefinitionError(f"{what}.{name} must not be negative")
        chk[key] = seconds
    if kind in INTERVAL_KINDS:
        if not chk.get("IntervalSeconds"):
            raise DefinitionError(f"{what}.Interval is required for a {kind} check (e.g. \"10s\")")
        if chk["IntervalSeconds"] < 1:
            chk["IntervalSeconds"] = 1.0  # Consul raises intervals below its minimum to 1s
    if kind == "ttl" and chk["TTLSeconds"] <= 0:
        raise DefinitionError(f"{what}.TTL must be positive")
    if kind == "ttl" and chk.get("IntervalSeconds"):
        raise DefinitionError(f"{what}: Interval and TTL cannot both be given (a TTL check has no interval)")
    if kind == "alias" and chk.get("IntervalSeconds"):
        raise DefinitionError(f"{what}.Interval must not be set for an alias check (it follows the aliased health)")
    if kind in UNSUPPORTED_KINDS:
        raise DefinitionError(f"{what}.{kinds[0][1]}: {UNSUPPORTED_KINDS[kind]}")
    _check_target(chk, kind, kinds[0][1], what)
    if not chk.get("Name"):
        chk["Name"] = chk.get("CheckID") or ""
    return chk


def _host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536 and not any(c in host for c in "/ "))


def _check_target(chk: dict[str, Any], kind: str, field: str, what: str) -> None:
    """Refuse targets no probe could ever reach because of their form (not whether they answer now)."""
    target = chk.get(field)
    if kind == "http":
        try:
            url = urlsplit(target)
            port = url.port
        except ValueError as e:
            raise DefinitionError(f"{what}.HTTP {target!r} is not a valid URL: {e}") from None
        if url.scheme not in ("http", "https"):
            raise DefinitionError(f"{what}.HTTP {target!r} must be an http:// or https:// URL")
        if not url.hostname:
            raise DefinitionError(f"{what}.HTTP {target!r} has no host (e.g. http://127.0.0.1:8080/health)")
        if port == 0:
            raise DefinitionError(f"{what}.HTTP {target!r}: port 0 cannot be dialled")
    elif kind in ("tcp", "udp", "h2ping"):
        if not _host_port(target):
            raise DefinitionError(f"{what}.{field} {target!r} must be host:port (port 1-65535)")
    elif kind == "grpc":
        hostport, _, _service = target.partition("/")
        if not _host_port(hostport):
            raise DefinitionError(f"{what}.GRPC {target!r} must be host:port or host:port/service (port 1-65535)")


# ---------------------------------------------------------------------- Connect: proxy and sidecar blocks
PROXY_FIELDS = (
    "DestinationServiceName", "DestinationServiceID", "LocalServiceAddress", "LocalServicePort",
    "LocalServiceSocketPath", "Mode", "TransparentProxy", "Config", "Upstreams", "MeshGateway", "Expose",
    "AccessLogs",
)
UPSTREAM_FIELDS = (
    "DestinationType", "DestinationNamespace", "DestinationPartition", "DestinationPeer", "DestinationName",
    "Datacenter", "LocalBindAddress", "LocalBindPort", "LocalBindSocketPath", "LocalBindSocketMode", "Config",
    "MeshGateway", "CentrallyConfigured",
)
CONNECT_FIELDS = ("Native", "SidecarService")
_PROXY_KEYS = _lookup(PROXY_FIELDS)
_UPSTREAM_KEYS = _lookup(UPSTREAM_FIELDS)
_CONNECT_KEYS = _lookup(CONNECT_FIELDS)
_MESH_GATEWAY_MODES = ("", "none", "local", "remote")


def _single(value: Any) -> Any:
    """HCL gives a block as a list of one object; Consul means the object."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0]
    return value


def _mesh_gateway(raw: Any, what: str) -> dict[str, Any]:
    raw = _single(raw) or {}
    if not isinstance(raw, dict):
        raise DefinitionError(f"{what} must be an object with Mode")
    mode = str(raw.get("Mode", raw.get("mode", "")) or "")
    if mode not in _MESH_GATEWAY_MODES:
        raise DefinitionError(f"{what}.Mode {mode!r} must be one of none, local, remote")
    return {"Mode": mode} if mode else {}


def upstream_block(raw: Any, what: str) -> dict[str, Any]:
    raw = _single(raw)
    if not isinstance(raw, dict):
        raise DefinitionError(f"{what} must be an object")
    up = canonical(raw, _UPSTREAM_KEYS, what)
    _type(up, "DestinationName", (str,), what, "a string")
    if not up.get("DestinationName"):
        raise DefinitionError(f"{what}.DestinationName is required")
    dtype = up.get("DestinationType") or "service"
    if dtype not in ("service", "prepared_query"):
        raise DefinitionError(f"{what}.DestinationType must be \"service\" or \"prepared_query\"")
    _type(up, "LocalBindPort", (int,), what, "a number")
    port = up.get("LocalBindPort")
    if not up.get("LocalBindSocketPath") and (port is None or not 1 <= port <= 65535):
        raise DefinitionError(f"{what}.LocalBindPort is required (1-65535)")
    up["DestinationType"] = dtype
    up["MeshGateway"] = _mesh_gateway(up.get("MeshGateway"), f"{what}.MeshGateway")
    cfg = _single(up.get("Config"))
    if cfg is not None and not isinstance(cfg, dict):
        raise DefinitionError(f"{what}.Config must be an object")
    if cfg is not None:
        up["Config"] = cfg
    return up


def proxy_block(raw: Any, what: str) -> dict[str, Any]:
    """A connect-proxy's Proxy block in Consul's PascalCase (snake_case accepted, as in config files)."""
    raw = _single(raw)
    if not isinstance(raw, dict):
        raise DefinitionError(f"{what} must be an object")
    proxy = canonical(raw, _PROXY_KEYS, what)
    _type(proxy, "DestinationServiceName", (str,), what, "a string")
    _type(proxy, "DestinationServiceID", (str,), what, "a string")
    _type(proxy, "LocalServiceAddress", (str,), what, "a string")
    _type(proxy, "LocalServicePort", (int,), what, "a number")
    cfg = _single(proxy.get("Config"))
    if cfg is not None and not isinstance(cfg, dict):
        raise DefinitionError(f"{what}.Config must be an object")
    if cfg is not None:
        proxy["Config"] = cfg
    ups = proxy.get("Upstreams")
    if ups is not None:
        if isinstance(ups, dict):
            ups = [ups]
        if not isinstance(ups, list):
            raise DefinitionError(f"{what}.Upstreams must be a list of upstreams")
        proxy["Upstreams"] = [upstream_block(u, f"{what}.Upstreams[{i}]") for i, u in enumerate(ups)]
    else:
        proxy["Upstreams"] = []
    proxy["MeshGateway"] = _mesh_gateway(proxy.get("MeshGateway"), f"{what}.MeshGateway")
    proxy.setdefault("Mode", "")
    proxy["Expose"] = _single(proxy.get("Expose")) or {}
    return proxy


def connect_block(raw: Any, what: str) -> dict[str, Any]:
    """A service's Connect block: Native, or a SidecarService (a nested service definition)."""
    conn = canonical(raw, _CONNECT_KEYS, what)
    _type(conn, "Native", (bool,), what, "a boolean")
    sidecar = _single(conn.get("SidecarService"))
    if sidecar is not None:
        if not isinstance(sidecar, dict):
            raise DefinitionError(f"{what}.SidecarService must be an object")
        conn["SidecarService"] = sidecar  # expanded into its own registration by agent/local/sidecar.py
    return conn
