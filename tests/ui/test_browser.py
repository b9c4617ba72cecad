"""The web UI in a real headless Chromium against a real dev agent: live services, a service's page, the
intentions editor enforced by authorize, the API's errors shown, and KV with check-and-set conflicts."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser import Browser
from support import AgentProcess, wait_for

Page = Any  # playwright.sync_api.Page


@pytest.fixture(scope="module")
def agent(ui_agent: AgentProcess) -> AgentProcess:
    wait_for(lambda: ui_agent.get("/v1/connect/ca/roots")[1]["Roots"], message="the CA")
    return ui_agent


@pytest.fixture
def page(browser: Browser, agent: AgentProcess) -> Iterator[Page]:
    """A fresh tab (its own storage); fails the test on any script error in the page."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    p.set_default_timeout(10_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert errors == [], f"script errors in the page: {errors}"


def register(agent: AgentProcess, body: dict) -> None:
    assert agent.put("/v1/agent/service/register", body)[0] == 200


def authorized(agent: AgentProcess, src: str, dst: str) -> bool:
    td = agent.get("/v1/connect/ca/roots")[1]["TrustDomain"]
    _, out, _ = agent.request("POST", "/v1/agent/connect/authorize", {
        "Target": dst, "ClientCertURI": f"spiffe://{td}/ns/default/dc/dc1/svc/{src}"})
    return out["Authorized"]


STATS = "import('/ui/assets/js/api.js').then((m) => m.watchStats())"


def test_services_appear_live_without_polling(page: Page, agent: AgentProcess) -> None:
    page.goto(agent.url + "/")
    page.wait_for_url("**/ui/dc1/services")
    page.get_by_role("heading", name="Services").wait_for()
    page.locator("tr[data-service=consul]").wait_for()
    assert page.locator("tr[data-service=orders]").count() == 0
    t0 = time.monotonic()
    register(agent, {"Name": "orders", "Port": 7000, "Tags": ["blue"], "Check": {"TTL": "60s"}})
    row = page.locator("tr[data-service=orders]")
    row.wait_for()
    appeared = time.monotonic() - t0
    assert appeared < 3.0, f"the new service took {appeared:.2f}s to appear"
    assert "critical" in row.inner_text().lower() and "blue" in row.inner_text()
    agent.put("/v1/agent/check/pass/service:orders")
    page.wait_for_function("document.querySelector('tr[data-service=orders]').innerText.includes('Passing')")
    # Idle: the open blocking query waits at the agent; nothing more is sent while nothing changes.
    before = page.evaluate(STATS)
    assert before["watches"] == 1, before
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert page.evaluate(STATS)["requests"] == before["requests"], "the services page polled while idle"


def test_many_tabs_share_one_blocking_query(browser: Browser, agent: AgentProcess) -> None:
    """Eight tabs on the services page (more than the browser's six connections per host) all stay live."""
    context = browser.new_context()
    try:
        pages = [context.new_page() for _ in range(8)]
        for p in pages:
            p.set_default_timeout(10_000)
            p.goto(agent.url + "/ui/dc1/services")
        for p in pages:
            p.locator("tr[data-service=consul]").wait_for()
        register(agent, {"Name": "many-tabs", "Port": 7050})
        for p in pages:
            p.locator("tr[data-service=many-tabs]").wait_for()
        assert pages[0].evaluate(STATS)["watches"] == 1
        # A tab that goes away stops its share; the last one to go stops the query.
        for p in pages[1:]:
            p.close()
        pages[0].goto(agent.url + "/ui/dc1/kv/")
        pages[0].get_by_role("heading", name="Key/Value").wait_for()
        wait_for(lambda: pages[0].evaluate(STATS)["watches"] == 1, timeout=5, message="only the KV watch left")
    finally:
        context.close()


def test_search_filter_and_sort(page: Page, agent: AgentProcess) -> None:
    for name, tags in (("alpha-api", ["edge"]), ("beta-api", []), ("gamma-db", ["edge"])):
        register(agent, {"Name": name, "Port": 7100, "Tags": tags})
    page.goto(agent.url + "/ui/dc1/services")
    page.locator("tr[data-service=gamma-db]").wait_for()
    search = page.get_by_label("Search services by name or tag")
    search.fill("api")
    page.wait_for_function("document.querySelectorAll('tbody tr[data-service]').length === 2")
    search.fill("tag:edge")
    page.wait_for_function("document.querySelectorAll('tbody tr[data-service]').length === 2")
    assert page.locator("tr[data-service=beta-api]").count() == 0
    search.fill("")
    page.get_by_label("Sort").select_option("-name")
    first = page.locator("tbody tr[data-service]").first.get_attribute("data-service")
    assert first == max(page.locator("tbody tr[data-service]").evaluate_all("rs => rs.map(r => r.dataset.service)"))
    assert "sort=-name" in page.url, "filters live in the URL so a link shares them"


def test_service_page_shows_instances_checks_and_topology(page: Page, agent: AgentProcess) -> None:
    register(agent, {"Name": "pay", "ID": "pay-1", "Port": 7200, "Tags": ["v3"], "Meta": {"team": "money"},
                     "Check": {"TTL": "60s", "Name": "pay alive"}})
    agent.put("/v1/agent/check/warn/service:pay-1?note=slow%20disk")
    register(agent, {"Name": "pay-sidecar-proxy", "Kind": "connect-proxy", "Port": 21500, "Proxy": {
        "DestinationServiceName": "pay", "Upstreams": [{"DestinationName": "ledger", "LocalBindPort": 9300}]}})
    agent.request("POST", "/v1/connect/intentions", {"SourceName": "pay", "DestinationName": "ledger", "Action": "deny"})
    page.goto(agent.url + "/ui/dc1/services")
    page.locator("tr[data-service=pay] a").click()
    page.wait_for_url("**/ui/dc1/services/pay")
    card = page.locator("[data-instance=pay-1]")
    card.wait_for()
    text = card.inner_text()
    assert "7200" in text and "v3" in text and "money" in text and "pay alive" in text
    page.wait_for_function("document.querySelector('[data-instance=pay-1]').innerText.includes('slow disk')")
    page.get_by_role("tab", name="Topology").click()
    link = page.locator("[data-link='pay->ledger']")
    link.wait_for()
    assert "denied" in link.inner_text() and "not registered" in link.inner_text()
    # pay's sidecar is registered but not running: no invented numbers, the reason instead
    link.locator("[data-metrics=unreachable]").wait_for()
    assert "proxy unreachable" in link.inner_text()
    # Live: allowing the link in another window flips the card without a reload.
    ixn = next(i for i in agent.get("/v1/connect/intentions")[1] if i["DestinationName"] == "ledger")
    agent.put(f"/v1/connect/intentions/{ixn['ID']}", {"SourceName": "pay", "DestinationName": "ledger",
                                                      "Action": "allow"})
    page.locator("[data-link='pay->ledger'].allowed").wait_for()
    # Keyboard: arrows move between tabs.
    page.get_by_role("tab", name="Topology").focus()
    page.keyboard.press("ArrowLeft")
    page.locator("[data-instance=pay-1]").wait_for()


def open_new_intention(page: Page) -> None:
    page.get_by_role("button", name="New intention").click()
    page.get_by_label("Source", exact=True).wait_for()


def test_intention_editor_is_enforced_by_authorize(page: Page, agent: AgentProcess) -> None:
    register(agent, {"Name": "front", "Port": 7300})
    register(agent, {"Name": "back", "Port": 7301})
    agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", "Config": {}})
    page.goto(agent.url + "/ui/dc1/intentions")
    page.get_by_role("heading", name="Intentions").wait_for()
    open_new_intention(page)
    page.get_by_label("Source", exact=True).fill("front")
    page.get_by_label("Destination", exact=True).fill("back")
    page.get_by_label("Allow").check()
    page.get_by_label("Description", exact=True).fill("front calls back")
    page.get_by_role("button", name="Save").click()
    row = page.locator("tr[data-pair='front->back']")
    row.wait_for()
    assert "allow" in row.inner_text()
    wait_for(lambda: authorized(agent, "front", "back"), timeout=5, message="authorize to allow front → back")
    # Flip it to deny in the editor.
    row.get_by_role("button", name="Edit front to back").click()
    page.get_by_label("Deny").check()
    page.get_by_role("button", name="Save").click()
    page.wait_for_function("document.querySelector(\"tr[data-pair='front->back']\").innerText.includes('deny')")
    t0 = time.monotonic()
    wait_for(lambda: not authorized(agent, "front", "back"), timeout=5, message="authorize to deny front → back")
    assert time.monotonic() - t0 < 1.5
    # The check box asks the agent and highlights the deciding intention.
    page.get_by_label("Check source").fill("front")
    page.get_by_label("Check destination").fill("back")
    page.get_by_role("button", name="Check", exact=True).click()
    result = page.locator(".check-result")
    result.wait_for()
    assert "Denied" in result.inner_text() and "front => back" in result.inner_text()
    assert "decided" in (row.get_attribute("class") or "")


def test_intention_editor_shows_the_api_error_and_flags_unknown_names(page: Page, agent: AgentProcess) -> None:
    page.goto(agent.url + "/ui/dc1/intentions?new=1")
    src = page.get_by_label("Source", exact=True)
    src.fill("ghost-service")
    page.locator("#ixn-source-hint", has_text="not in the catalog").wait_for()  # once the catalog's names arrive
    src.fill("bad*name")
    page.get_by_label("Destination", exact=True).fill("back")
    page.get_by_label("Allow").check()
    page.get_by_role("button", name="Save").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "HTTP 400" in alert.inner_text() and "wildcard must be the whole name" in alert.inner_text()
    assert not any(i["SourceName"] == "bad*name" for i in agent.get("/v1/connect/intentions")[1])


def test_l7_permissions_need_an_http_destination(page: Page, agent: AgentProcess) -> None:
    register(agent, {"Name": "books", "Port": 7400})
    page.goto(agent.url + "/ui/dc1/intentions?new=1")
    page.get_by_label("Source", exact=True).fill("front")
    page.get_by_label("Destination", exact=True).fill("books")
    page.get_by_text("Destination protocol: tcp").wait_for()
    assert page.get_by_label("Application-aware (L7 permissions)").is_disabled()
    agent.put("/v1/config", {"Kind": "service-defaults", "Name": "books", "Protocol": "http"})
    page.get_by_label("Destination", exact=True).fill("book")
    page.get_by_label("Destination", exact=True).fill("books")
    page.get_by_text("Destination protocol: http").wait_for()
    page.get_by_label("Application-aware (L7 permissions)").check()
    perm = page.locator("[data-permission='0']")
    perm.get_by_label("Path value").fill("/read")
    perm.get_by_label("GET").check()
    page.get_by_role("button", name="Save").click()
    page.locator("tr[data-pair='front->books']").wait_for()
    ixn = next(i for i in agent.get("/v1/connect/intentions")[1] if i["DestinationName"] == "books")
    assert ixn["Permissions"] == [{"Action": "allow", "HTTP": {"PathPrefix": "/read", "Methods": ["GET"]}}]
    page.get_by_label("Check source").fill("front")
    page.get_by_label("Check destination").fill("books")
    page.get_by_label("HTTP path").fill("/read/7")
    page.get_by_role("button", name="Check", exact=True).click()
    page.locator(".check-result.allowed").wait_for()


def kv_value(agent: AgentProcess, key: str) -> str | None:
    status, rows = agent.get(f"/v1/kv/{key}")
    return base64.b64decode(rows[0]["Value"] or "").decode() if status == 200 else None


def test_kv_create_edit_conflict_delete(page: Page, agent: AgentProcess) -> None:
    page.goto(agent.url + "/ui/dc1/kv/")
    page.get_by_role("link", name="Create").click()
    page.get_by_label("Key").fill("app/config.json")
    value = page.get_by_label("Value")
    value.fill('{"replicas": 2,}')
    page.get_by_text("✕ JSON").wait_for()
    page.get_by_role("button", name="Create").click()
    assert "syntax error" in page.get_by_role("alert").inner_text()
    assert kv_value(agent, "app/config.json") is None, "invalid JSON is not saved"
    value.fill('{"replicas": 2}')
    page.get_by_text("✓ valid JSON").wait_for()
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/kv/app/config.json")
    assert kv_value(agent, "app/config.json") == '{"replicas": 2}'
    # Edit and save (check-and-set with the index the editor loaded). The key's own editor (its button says
    # Save, the new-key editor's Create) shows its textarea only once the stored value is in it.
    page.get_by_role("button", name="Save").wait_for()
    value = page.get_by_label("Value")
    assert value.input_value() == '{"replicas": 2}'
    value.fill('{"replicas": 3}')
    page.get_by_role("button", name="Save").click()
    page.get_by_text("Saved.").wait_for()
    assert kv_value(agent, "app/config.json") == '{"replicas": 3}'
    # Someone else saves while we edit: ours must not silently overwrite theirs.
    value.fill('{"replicas": 4}')
    assert agent.put("/v1/kv/app/config.json", raw=b'{"replicas": 9}')[1] is True
    page.get_by_role("button", name="Save").click()
    conflict = page.locator(".conflict")
    conflict.wait_for()
    assert "Conflict" in conflict.inner_text() and kv_value(agent, "app/config.json") == '{"replicas": 9}'
    conflict.get_by_role("button", name="Overwrite with mine").click()
    page.get_by_text("Saved.").wait_for()
    assert kv_value(agent, "app/config.json") == '{"replicas": 4}'
    # Delete.
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/kv/app/")
    wait_for(lambda: kv_value(agent, "app/config.json") is None, timeout=5, message="the key to be deleted")


def test_kv_yaml_and_hcl_are_checked_before_saving(page: Page, agent: AgentProcess) -> None:
    page.goto(agent.url + "/ui/dc1/kv/?new=1")
    page.get_by_label("Key").fill("app/values.yaml")
    page.get_by_label("Value").fill("a: 1\n b: 2\n")
    page.get_by_text("✕ YAML").wait_for()
    assert "line" in page.locator("#kv-check").inner_text()
    page.get_by_label("Value").fill("a: 1\nb: [2, 3]\n")
    page.get_by_text("✓ valid YAML").wait_for()
    page.get_by_label("Key").fill("app/limits.hcl")
    page.get_by_label("Value").fill('limit {\n  rps = \n}\n')
    page.get_by_text("✕ HCL").wait_for()
    page.get_by_label("Value").fill('limit {\n  rps = 10\n}\n')
    page.get_by_text("✓ valid HCL").wait_for()
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/kv/app/limits.hcl")
    assert kv_value(agent, "app/limits.hcl") == 'limit {\n  rps = 10\n}\n'
    # A key with characters URLs treat specially opens from its folder and shows its value.
    assert agent.put("/v1/kv/app/odd%20name%3F%23", raw=b"plain")[1] is True
    page.goto(agent.url + "/ui/dc1/kv/app/")
    page.locator("[data-key='app/odd name?#'] a").click()
    page.get_by_role("heading", name="odd name?#").wait_for()
    assert page.get_by_label("Value").input_value() == "plain"


def test_nodes_token_and_narrow_window(browser: Browser, agent: AgentProcess) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    tokens: list[str | None] = []
    page.on("request", lambda r: tokens.append(r.headers.get("x-consul-token")) if "/v1/" in r.url else None)
    try:
        page.goto(agent.url + "/ui/dc1/nodes")
        page.locator("tr[data-node=dev]").wait_for()
        assert page.locator("select[aria-label=Datacenter]").count() == 0, "one datacenter: no switcher"
        nav = page.get_by_role("navigation", name="Main")
        assert not nav.is_visible(), "a narrow window folds the navigation behind Menu"
        page.get_by_role("button", name="Menu").click()
        nav.get_by_role("link", name="Key/Value").focus()
        page.keyboard.press("Enter")
        page.wait_for_url("**/ui/dc1/kv")
        page.get_by_role("button", name="Token").click()
        page.get_by_label("ACL token").fill("s3cret")
        with page.expect_navigation():
            page.get_by_role("button", name="Save").click()
        page.wait_for_function("localStorage.getItem('proconsul:token') === 's3cret'")
        page.get_by_role("heading", name="Key/Value").wait_for()
        wait_for(lambda: "s3cret" in tokens, timeout=5, message="API calls to carry X-Consul-Token")
        page.goto(agent.url + "/ui/dc1/nodes/dev")
        page.get_by_role("heading", name="Health checks").wait_for()
        assert "Serf Health Status" in page.inner_text("main")
    finally:
        context.close()
