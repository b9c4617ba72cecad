"""Batched datagram I/O (recvmmsg/sendmmsg): every answer goes back to the socket that asked."""

from __future__ import annotations

import socket
import sys

import pytest

from proconsul.dns.mmsg import SLOT, BatchSocket

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="recvmmsg/sendmmsg are Linux calls")


def _pair(family: int, host: str) -> tuple[socket.socket, BatchSocket]:
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    batch = BatchSocket.create(server, slots=4)
    assert batch is not None
    return server, batch


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_batch_receives_and_answers_each_sender(family: int, host: str) -> None:
    try:
        server, batch = _pair(family, host)
    except OSError as exc:
        pytest.skip(f"no {host} here: {exc}")
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        assert batch.recv() == 0  # nothing waiting: no error, no datagram
        for round_ in range(2):  # twice: the second recv must reset the name lengths the first filled
            for k, c in enumerate(clients + clients[:2]):  # 5 datagrams for 4 slots
                c.settimeout(2)
                c.sendto(f"q{round_}-{k}".encode(), server.getsockname())
            got = []
            while len(got) < 5:
                n = batch.recv()
                sizes = batch.lengths(n)
                for i, size in enumerate(sizes):
                    data = bytes(batch.rbuf[i * SLOT:i * SLOT + size])
                    got.append(data)
                    sender = clients[int(data.decode().split("-")[1]) % 3]
                    assert batch.addr(i)[:2] == (host, sender.getsockname()[1])
                    answer = b"answer to " + data  # written over the question, in its slot
                    batch.rbuf[i * SLOT:i * SLOT + len(answer)] = answer
                    batch.out_len[i] = len(answer)
                    assert batch.answer(i) == answer
                assert batch.send(0, n) == n
            assert sorted(got) == sorted(f"q{round_}-{k}".encode() for k in range(5))
            for k, c in enumerate(clients):
                expected = {f"answer to q{round_}-{k}".encode(), f"answer to q{round_}-{k + 3}".encode()}
                answers = {c.recv(100) for _ in range(2 if k < 2 else 1)}
                assert answers <= expected and len(answers) == (2 if k < 2 else 1)
    finally:
        server.close()
        for c in clients:
            c.close()


def test_a_slot_sends_only_its_answers_bytes_and_recv_restores_it() -> None:
    server, batch = _pair(socket.AF_INET, "127.0.0.1")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        for question, answer in ((b"a long question " * 8, b"short"), (b"q", b"a longer answer " * 8)):
            client.sendto(question, server.getsockname())
            n = 0
            while not n:
                n = batch.recv()
            assert batch.lengths(n) == [len(question)] and batch.out_len[0] == SLOT  # restored by recv()
            batch.rbuf[:len(answer)] = answer
            batch.out_len[0] = len(answer)
            assert batch.send(0, 1) == 1
            assert client.recv(SLOT) == answer
    finally:
        server.close()
        client.close()


def test_not_a_socket_means_no_batching() -> None:
    assert BatchSocket.create(object()) is None  # type: ignore[arg-type]
