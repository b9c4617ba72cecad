"""Garbage on the server port (RPC and Raft) and the LAN port closes that connection, nothing more."""

from __future__ import annotations

import os
import socket
import struct

from support import AgentProcess, wait_for


def _send(port: int, data: bytes, want: int = 0) -> bytes:
    """Send `data`; read until the peer closes (or, with `want`, until one frame of an answer came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if not want:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                got = b"".join(chunks)
                if want and len(got) >= 4 and len(got) >= 4 + struct.unpack(">I", got[:4])[0]:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def test_bad_frames_on_server_and_lan_ports_leave_the_agent_serving(dev_agent: AgentProcess) -> None:
    rng = os.urandom
    payloads = [b"", b"\x00", b"\x01", b"\x02garbage", b"\x00" + struct.pack(">I", 1 << 30),
                b"\x00" + struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1", b"\x00" + struct.pack(">I", 2) + b"\x93\x01",
                b"\x01" + struct.pack(">I", 3) + b"abc", b"\x00" + struct.pack(">I", 4) + b"\x93\x01\xa1x"]
    payloads += [rng(n) for n in (1, 7, 64, 4096)]
    for p in payloads:
        _send(dev_agent.server_port, p)
        _send(dev_agent.serf_lan_port, p)
    # A well-formed RPC for a method that does not exist gets an error answer, not a hang.
    import msgpack

    req = msgpack.packb([7, "no.such.method", {}])
    reply = _send(dev_agent.server_port, b"\x00" + struct.pack(">I", len(req)) + req, want=1)
    seq, err, _ = msgpack.unpackb(reply[4:], raw=False)
    assert seq == 7 and err[0] == "UnknownMethod"
    # Garbage datagrams on the LAN port's UDP side are dropped.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for p in payloads + [b"\x01\x01\x07lan:dc1\x91\x93\x01", b"\x01\x00" + rng(1500)]:
            u.sendto(p, ("127.0.0.1", dev_agent.serf_lan_port))
    # A push-pull from another datacenter's pool is refused with a reason.
    from proconsul.membership import codec

    msg = codec.Codec("lan:elsewhere").body(codec.pp_summary(True, 1, 0, [0]))
    reply = _send(dev_agent.serf_lan_port, struct.pack(">I", len(msg)) + msg, want=1)
    assert b"this is pool 'lan:dc1'" in reply and b"lan:elsewhere" in reply
    wait_for(lambda: dev_agent.put("/v1/kv/still-alive", "yes") == (200, True), message="the agent to answer")
    assert [m["Name"] for m in dev_agent.get("/v1/agent/members")[1]] == ["dev"]
