"""The agent's gossip keyring: `encrypt` and the keyring files, and keyring operations across the pool.

**Start-up** (Consul's rules). The LAN keyring lives in `<data_dir>/serf/local.keyring`, a server's
WAN keyring in `serf/remote.keyring` (a JSON list of base64 keys, the primary first). On the first
start with `encrypt` the file is written with that one key; from then on **the file wins** over
`encrypt` (rotations survive restarts), and the agent logs it when the file does not hold the
`encrypt` key. A file present without `encrypt` still turns encryption on. `disable_keyring_file`
keeps the keyring in memory only; dev agents (no data dir) do too.

**Operations** (`/v1/operator/keyring`, `proconsul keyring`). Consul sends a serf query to every
member and collects the answers. Ours is the same shape on our pool: the agent that takes the
request applies the operation to its own keyring, then sends one `keyring` request
(`membership.pool.Pool.request`, a TCP exchange on the gossip port, sealed with the gossip key like
any frame) to every member that is alive or suspect, at most `FANOUT` at a time, and counts the
answers: each member answers with the keys it holds and its primary after the operation, or the
error it hit. A member that does not answer within `REQUEST_TIMEOUT` is reported by name. Requests
that did not arrive sealed are refused (with `encrypt_verify_incoming = false` a plaintext frame is
read, but never obeyed for a keyring change). A server applies each operation to its LAN and its WAN
keyring in lock-step, as Consul's do, and reports both.

The agent answers requests itself (a request changes only this agent's keyring and its file); the
replies are what `GET` counts: `Keys` (key → members holding it), `PrimaryKeys`, `NumNodes`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from proconsul.agent.config.model import AgentConfig
from proconsul.membership.errors import MembershipError
from proconsul.membership.keyring import (
    GossipSealer,
    Keyring,
    KeyringError,
    decode_key,
    encode_key,
    read_keyring_file,
    write_keyring_file,
)
from proconsul.membership.pool import Pool, RequestRefused

log = logging.getLogger("proconsul.keyring")

LAN_FILE = Path("serf") / "local.keyring"
WAN_FILE = Path("serf") / "remote.keyring"
REQUEST = "keyring"  # from a LAN member: both keyrings
WAN_REQUEST = "keyring-wan"  # from a WAN member: the WAN keyring only
OPS = ("list", "install", "use", "remove")
FANOUT = 32  # requests in flight at once
REQUEST_TIMEOUT = 5.0


class KeyringNotEnabled(KeyringError):
    """A keyring operation on an agent without gossip encryption (Consul's 500 wording)."""


@dataclass(frozen=True)
class Target:
    """A member to send the operation to."""

    name: str
    addr: str
    port: int


class Ring:
    """One pool's keyring and the file it is kept in (None: memory only)."""

    def __init__(self, keyring: Keyring, path: Path | None) -> None:
        self.keyring = keyring
        self.path = path

    def apply(self, op: str, key: bytes | None) -> None:
        kr = self.keyring
        if op == "install":
            assert key is not None
            kr.install(key)
        elif op == "use":
            assert key is not None
            kr.use(key)
        elif op == "remove":
            assert key is not None
            kr.remove(key)
        else:
            return
        if self.path is not None:
            try:
                write_keyring_file(self.path, kr)
            except OSError as e:  # the change is live; say loudly that it will not survive a restart
                log.error("keyring: could not write %s: %s; the change is in memory only", self.path, e)

    def state(self) -> dict[str, Any]:
        return {"keys": self.keyring.encoded(), "primary": encode_key(self.keyring.primary)}


def load_ring(cfg: AgentConfig, rel: Path, what: str) -> Ring | None:
    """The keyring for one pool, from its file or `encrypt` (see the module's docstring); None: no encryption."""
    path = Path(cfg.data_dir) / rel if cfg.data_dir and not cfg.disable_keyring_file else None
    given = decode_key(cfg.encrypt, "encrypt") if cfg.encrypt else None
    if path is not None and path.exists():
        ring = Ring(Keyring(read_keyring_file(path)), path)
        if given is not None and given not in ring.keyring.keys:
            log.warning("%s keyring doesn't include key provided with -encrypt, using keyring (%s)", what, path)
        log.info("gossip encryption on for the %s pool: %d key(s) from %s", what, len(ring.keyring.keys), path)
        return ring
    if given is None:
        return None
    ring = Ring(Keyring([given]), path)
    if path is not None:
        try:
            write_keyring_file(path, ring.keyring)
        except OSError as e:
            raise KeyringError(f"encrypt: cannot write the keyring file {path}: {e}") from None
    log.info("gossip encryption on for the %s pool: the `encrypt` key%s", what, f", kept in {path}" if path else "")
    return ring


class GossipKeys:
    """This agent's keyrings (LAN, and WAN on a server) and the keyring operations."""

    def __init__(self, cfg: AgentConfig, *, wan: bool) -> None:
        self.datacenter = cfg.datacenter
        self.node = cfg.node_name
        self.lan = load_ring(cfg, LAN_FILE, "LAN")
        self.wan = load_ring(cfg, WAN_FILE, "WAN") if wan else None
        verify = {"verify_incoming": cfg.encrypt_verify_incoming, "verify_outgoing": cfg.encrypt_verify_outgoing}
        self.lan_sealer = GossipSealer(self.lan.keyring, **verify) if self.lan else None
        self.wan_sealer = GossipSealer(self.wan.keyring, **verify) if self.wan else None
        for what, ring in (("LAN", self.lan), ("WAN", self.wan)):
            if ring is not None and not (cfg.encrypt_verify_incoming and cfg.encrypt_verify_outgoing):
                log.warning("%s gossip: encrypt_verify_incoming=%s, encrypt_verify_outgoing=%s: plaintext gossip is "
                            "%s (a rolling enablement; set both to true once every agent has the key)", what,
                            str(cfg.encrypt_verify_incoming).lower(), str(cfg.encrypt_verify_outgoing).lower(),
                            "accepted" if not cfg.encrypt_verify_incoming else "sent")

    @property
    def enabled(self) -> bool:
        return self.lan is not None

    # ------------------------------------------------------------------ one member's side
    def local(self, op: str, key: bytes | None, wan_only: bool = False) -> dict[str, Any]:
        """Apply an operation to this agent's keyrings (both, or the WAN one); its state afterwards (what a
        member answers)."""
        if self.lan is None:
            raise KeyringNotEnabled("Keyring is empty: gossip encryption is not enabled on this agent")
        if wan_only and self.wan is None:
            raise KeyringError("this agent has no WAN keyring (not a server with a WAN port)")
        rings = ([] if wan_only else [self.lan]) + ([self.wan] if self.wan is not None else [])
        if op == "use":  # check every ring first, so LAN and WAN stay in lock-step
            for ring in rings:
                if key not in ring.keyring.keys:
                    raise KeyringError("Requested key is not in the keyring")
        if op == "remove":
            for ring in rings:
                if key == ring.keyring.primary:
                    raise KeyringError("Removing the primary key is not allowed")
        for ring in rings:
            ring.apply(op, key)
        if op != "list":
            log.info("keyring: %s %s (%s)", op, encode_key(key) if key else "",
                     "WAN" if wan_only else "LAN and WAN" if self.wan else "LAN")
        return {"lan": self.lan.state(), "wan": self.wan.state() if self.wan is not None else None}

    def handle(self, name: str, payload: bytes, sealed: bool) -> bytes:
        """A pool's `on_request`: a keyring operation another member sent us (`keyring` from a LAN member:
        both keyrings; `keyring-wan` from a WAN member: the WAN keyring only)."""
        if name not in (REQUEST, WAN_REQUEST):
            raise RequestRefused(f"unknown request {name!r}")
        if not sealed:
            raise RequestRefused("keyring operations must arrive encrypted with a gossip key")
        try:
            req = msgpack.unpackb(payload)
            op, key = req["op"], req.get("key")
            if op not in OPS or (key is not None and type(key) is not bytes):
                raise ValueError(op)
            return msgpack.packb(self.local(op, key, wan_only=name == WAN_REQUEST), use_bin_type=True)
        except KeyringError as e:
            raise RequestRefused(str(e)) from None
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            raise RequestRefused("malformed keyring request") from None

    # ------------------------------------------------------------------ the cluster-wide operation
    async def operate(self, pool: Pool, targets: Sequence[Target], op: str, key_text: str = "",
                      local_only: bool = False, wan: tuple[Pool, Sequence[Target]] | None = None
                      ) -> list[dict[str, Any]]:
        """Run `op` here and on every LAN target (the other members); Consul's `KeyringResponse` list, the WAN
        row first on servers. The WAN row counts this datacenter's servers (their LAN answers) unless `wan`
        gives the WAN pool and its other members, which are then asked too (`keyring-wan`) — how the WAN
        pool joins in once it runs on `membership.pool.Pool`. `local_only` asks no WAN member.
        Raises `KeyringError` for a bad key or an operation this agent refuses before asking anyone."""
        if op not in OPS:
            raise KeyringError(f"unknown keyring operation {op!r}")
        key = decode_key(key_text, "Key") if op != "list" else None
        mine = self.local(op, key)
        payload = msgpack.packb({"op": op, "key": key}, use_bin_type=True)
        answers, errors = await _fan_out(pool, targets, REQUEST, payload)
        answers[self.node] = mine
        out = []
        if wan is not None and not local_only and self.wan is not None:
            wan_answers, wan_errors = await _fan_out(wan[0], wan[1], WAN_REQUEST, payload)
            wan_answers[self.node] = mine
            out.append(self._summary(True, {n: a["wan"] for n, a in wan_answers.items()
                                            if isinstance(a.get("wan"), dict)}, wan_errors, len(wan[1]) + 1))
        else:
            wan_rows = {n: a["wan"] for n, a in answers.items() if isinstance(a.get("wan"), dict)}
            if wan_rows:
                out.append(self._summary(True, wan_rows, {}, len(wan_rows)))
        lan_answers = {n: a["lan"] for n, a in answers.items() if isinstance(a.get("lan"), dict)}
        out.append(self._summary(False, lan_answers, errors, len(targets) + 1))
        return out

    def _summary(self, wan: bool, answers: dict[str, dict[str, Any]], errors: dict[str, str],
                 num_nodes: int) -> dict[str, Any]:
        keys: dict[str, int] = {}
        primary: dict[str, int] = {}
        for a in answers.values():
            for k in a.get("keys", []):
                keys[k] = keys.get(k, 0) + 1
            p = a.get("primary")
            if isinstance(p, str):
                primary[p] = primary.get(p, 0) + 1
        row: dict[str, Any] = {"WAN": wan, "Datacenter": self.datacenter, "Segment": "", "Keys": keys,
                               "PrimaryKeys": primary, "NumNodes": num_nodes}
        if errors:
            row["Messages"] = errors
        return row


async def _fan_out(pool: Pool, targets: Sequence[Target], name: str,
                   payload: bytes) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Send one request to every target, `FANOUT` at a time: (answers by member, errors by member)."""
    answers: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    gate = asyncio.Semaphore(FANOUT)

    async def ask(t: Target) -> None:
        async with gate:
            try:
                reply = await pool.request((t.addr, t.port), name, payload, REQUEST_TIMEOUT)
                answer = msgpack.unpackb(reply)
                if type(answer) is not dict:
                    raise ValueError("not a map")
                answers[t.name] = answer
            except MembershipError as e:
                errors[t.name] = str(e)
            except (OSError, TimeoutError) as e:
                errors[t.name] = f"no answer: {e or type(e).__name__}"
            except (ValueError, msgpack.UnpackException):
                errors[t.name] = "a malformed answer"

    await asyncio.gather(*(ask(t) for t in targets))
    return answers, errors


def failures(rows: list[dict[str, Any]]) -> str:
    """One line naming the members that failed an operation ("" when none did)."""
    parts = []
    for row in rows:
        for node, msg in sorted(row.get("Messages", {}).items()):
            parts.append(f"{node}: {msg}")
    if not parts:
        return ""
    n = sum(len(r.get("Messages", {})) for r in rows)
    total = max((r["NumNodes"] for r in rows if not r["WAN"]), default=0)
    return f"{n}/{total} nodes reported failure: " + "; ".join(parts)
