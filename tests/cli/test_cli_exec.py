"""`proconsul exec` (Consul's `consul exec`) against real agents: a dev server that allows remote exec and a
client agent that keeps Consul's default (`disable_remote_exec = true`). Only the first runs the job; its
output, exit code and the summary come back as Consul prints them; the job's keys are gone afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AgentProcess, run, wait_for

pytestmark = pytest.mark.xdist_group("exec")


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    tmp: Path = tmp_path_factory.mktemp("exec")
    a = AgentProcess(tmp / "a", args=["-hcl", "disable_remote_exec = false"])
    a.start()
    b = AgentProcess(tmp / "b", dev=False, args=["--node", "b", "--data-dir", str(tmp / "b" / "data"),
                                                 "--retry-join", f"127.0.0.1:{a.serf_lan_port}",
                                                 "--retry-interval", "1s"])
    try:
        b.start()
        wait_for(lambda: {m["Name"] for m in a.get("/v1/agent/members")[1] if m["Status"] == 1} == {"dev", "b"},
                 20, message="the client agent to join")
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_exec_runs_where_allowed_and_reports_output_and_exit_codes(agents: tuple[AgentProcess, AgentProcess]) -> None:
    a, b = agents
    res = run(a, "exec", "-wait=1s", "echo out; echo err >&2; exit 3")
    assert res.returncode == 2, res.stderr  # a node exited non-zero: Consul's status 2
    lines = res.stdout.splitlines()
    assert "    dev: out" in lines and "    dev: err" in lines, res.stdout
    assert "==> dev: finished with exit code 3" in lines and lines[-1] == "1 / 1 node(s) completed / acknowledged"
    assert not any(" b: " in line for line in lines), "the client keeps disable_remote_exec = true"
    wait_for(lambda: "ignored: disable_remote_exec is true" in b.log(), 10, message="b to say why it ignored it")
    assert a.get("/v1/kv/_rexec?recurse")[0] == 404, "the job's keys are deleted with its session"


def test_exec_script_from_stdin_args_and_filters(agents: tuple[AgentProcess, AgentProcess]) -> None:
    a, _ = agents
    res = run(a, "exec", "-wait=1s", "-", stdin="x=41\necho $((x + 1))\n")
    assert res.returncode == 0 and "    dev: 42" in res.stdout.splitlines(), res.stdout + res.stderr
    res = run(a, "exec", "-wait=1s", "-shell=false", "printf", "%s-%s", "a b", "c")
    assert res.returncode == 0 and "    dev: a b-c" in res.stdout.splitlines(), res.stdout + res.stderr
    res = run(a, "exec", "-wait=1s", "-node", "^nomatch$", "true")
    assert res.returncode == 0 and res.stdout.strip() == "0 / 0 node(s) completed / acknowledged"
    assert "Must specify a command" in run(a, "exec").stderr
    assert "Cannot provide tag filter without service filter" in run(a, "exec", "-tag", "v1", "true").stderr
