"""The UI across two federated datacenters, in a real headless Chromium: the datacenter switcher lists
both, every page it shows asks the chosen datacenter (`?dc=`), and live updates follow the remote one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Browser
from support import AgentProcess, wait_for

pytestmark = pytest.mark.xdist_group("ui-federation")

Page = Any  # playwright.sync_api.Page


@pytest.fixture(scope="module")
def two_dcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    """Two dev agents, dc1 and dc2, joined over the WAN (each is its datacenter's only server)."""
    root: Path = tmp_path_factory.mktemp("ui-fed")
    a = AgentProcess(root / "a", args=["--node", "east", "--datacenter", "dc1"])
    b = AgentProcess(root / "b", args=["--node", "west", "--datacenter", "dc2"])
    b.extra_args += ["--retry-join-wan", f"127.0.0.1:{a.serf_wan_port}"]
    try:
        a.start()
        b.start()
        wait_for(lambda: sorted(a.get("/v1/catalog/datacenters")[1]) == ["dc1", "dc2"], 30,
                 message="dc1 to know dc2 over the WAN")
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture
def page(browser: Browser, two_dcs: tuple[AgentProcess, AgentProcess]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    p.set_default_timeout(15_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert errors == [], f"script errors in the page: {errors}"


def test_the_switcher_shows_the_other_datacenter_live(page: Page, two_dcs: tuple[AgentProcess, AgentProcess]) -> None:
    east, west = two_dcs
    assert west.put("/v1/agent/service/register", {"Name": "only-west", "Port": 9100, "Tags": ["w"]})[0] == 200
    page.goto(east.url + "/ui/")
    page.wait_for_url("**/ui/dc1/services")
    page.locator("tr[data-service=consul]").wait_for()
    assert page.locator("tr[data-service=only-west]").count() == 0, "dc2's service shown in dc1"
    switch = page.get_by_label("Datacenter")
    switch.wait_for()
    assert sorted(switch.locator("option").all_inner_texts()) == ["dc1", "dc2"]

    switch.select_option("dc2")
    page.wait_for_url("**/ui/dc2/services")
    row = page.locator("tr[data-service=only-west]")
    row.wait_for()
    assert "w" in row.inner_text()  # only dc2 has it: the page asked dc2 (its fetches carry ?dc=dc2)

    # Live across the WAN: a service registered in dc2 appears without a reload (a forwarded blocking query).
    t0 = time.monotonic()
    assert west.put("/v1/agent/service/register", {"Name": "late-west", "Port": 9101})[0] == 200
    page.locator("tr[data-service=late-west]").wait_for()
    assert time.monotonic() - t0 < 5.0

    # The nodes page of dc2 lists dc2's node, not ours.
    page.goto(east.url + "/ui/dc2/nodes")
    page.get_by_text("west", exact=True).first.wait_for()
    assert page.get_by_text("east", exact=True).count() == 0

    # And back: dc1 does not have dc2's services.
    page.get_by_label("Datacenter").select_option("dc1")
    page.wait_for_url("**/ui/dc1/**")
    page.goto(east.url + "/ui/dc1/services")
    page.locator("tr[data-service=consul]").wait_for()
    assert page.locator("tr[data-service=only-west]").count() == 0
