"""The dashboard in a real headless Chromium (Selenium): log in, filter to flagged ECGs, open one, resend a
delivery, run an audit query. Screenshots go to the test's tmp folder and to test-output/screenshots/."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecgcad.api.server import ApiServer
from ecgcad.context import AppContext
from ecgcad.db.models import Delivery
from tests.api.conftest import PATIENT_FLAGGED, Seeded, Tokens

CHROMIUM = os.environ.get("ECGCAD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ECGCAD_CHROMEDRIVER", "/usr/bin/chromedriver")
REPO_SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"

pytestmark = pytest.mark.browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by chromedriver, or a visible skip when either is missing."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not (Path(tool).is_file() and os.access(tool, os.X_OK)) and shutil.which(tool) is None:
            pytest.skip(f"headless browser test needs {tool} (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(ctx: AppContext, request: pytest.FixtureRequest) -> Iterator[str]:
    """The app served by uvicorn on an ephemeral loopback port (real pipeline actions when installed)."""
    if importlib.util.find_spec("ecgcad.pipeline.actions") is None:
        request.getfixturevalue("stand_in_actions")
    api = ApiServer(ctx)
    api.start()
    try:
        host, port = api.address
        yield f"http://{host}:{port}"
    finally:
        api.stop()


def test_admin_logs_in_filters_flagged_opens_one_resends_and_queries_audit(
    browser: Any, server: str, ctx: AppContext, seeded: Seeded, tokens: Tokens, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    shots = tmp_path / "screenshots"
    shots.mkdir()
    wait = WebDriverWait(browser, 30)

    def shot(name: str) -> None:
        browser.save_screenshot(str(shots / f"{name}.png"))

    # log in
    browser.get(f"{server}/login")
    shot("01-login")
    browser.find_element(By.ID, "token").send_keys(tokens.admin)
    browser.find_element(By.ID, "login").click()
    wait.until(ec.presence_of_element_located((By.ID, "received-today")))
    assert browser.find_element(By.ID, "received-today").text == "3"
    assert "alice-admin (admin)" in browser.find_element(By.CSS_SELECTOR, "header .who").text
    shot("02-overview")

    # filter to flagged ECGs
    browser.find_element(By.LINK_TEXT, "Results").click()
    wait.until(ec.presence_of_element_located((By.ID, "filters")))
    Select(browser.find_element(By.ID, "flagged")).select_by_value("true")
    browser.find_element(By.ID, "apply").click()
    wait.until(ec.url_contains("flagged=true"))
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.ecg-row")
    assert [r.get_attribute("data-ecg-id") for r in rows] == [str(seeded.flagged_ecg)]
    assert "flagged" in (rows[0].get_attribute("class") or "")
    shot("03-flagged-results")

    # open it: identifiers, probabilities, tracing
    rows[0].find_element(By.CSS_SELECTOR, "a.ecg-link").click()
    wait.until(ec.presence_of_element_located((By.ID, "probabilities")))
    assert PATIENT_FLAGGED in browser.find_element(By.ID, "patient-id").text
    assert "HIGH" in browser.find_element(By.ID, "probabilities").text
    wait.until(
        lambda d: d.execute_script(
            "const i = document.getElementById('tracing'); return i.complete && i.naturalWidth > 0;"
        )
    )
    shot("04-ecg-detail")

    # resend the failed delivery from the detail page
    row = browser.find_element(
        By.CSS_SELECTOR, f"#deliveries tr[data-delivery-id='{seeded.failed_delivery}']"
    )
    assert "failed" in row.text
    row.find_element(By.CSS_SELECTOR, "form.resend button").click()
    wait.until(ec.presence_of_element_located((By.ID, "message")))
    assert "resend" in browser.find_element(By.ID, "message").text.lower()
    row = browser.find_element(
        By.CSS_SELECTOR, f"#deliveries tr[data-delivery-id='{seeded.failed_delivery}']"
    )
    assert "pending" in row.text
    shot("05-resent")
    with ctx.db.session() as s:
        assert s.get(Delivery, seeded.failed_delivery).state == "pending"  # type: ignore[union-attr]

    # audit query: who touched this patient
    browser.find_element(By.LINK_TEXT, "Audit").click()
    wait.until(ec.presence_of_element_located((By.ID, "audit-filters")))
    browser.find_element(By.ID, "audit-patient-id").send_keys(PATIENT_FLAGGED)
    browser.find_element(By.ID, "audit-user").send_keys("alice-admin")
    browser.find_element(By.ID, "run-audit").click()
    wait.until(ec.url_contains("patient_id="))
    text = browser.find_element(By.ID, "audit-results").text
    assert "api.read" in text and "api.action" in text and "alice-admin" in text
    assert "No events match" not in text
    shot("06-audit-query")

    # the pages work under the Content-Security-Policy: nothing was blocked on the way
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert blocked == []

    names = sorted(p.name for p in shots.glob("*.png"))
    assert names == [
        "01-login.png",
        "02-overview.png",
        "03-flagged-results.png",
        "04-ecg-detail.png",
        "05-resent.png",
        "06-audit-query.png",
    ]
    assert all((shots / n).stat().st_size > 5000 for n in names)
    REPO_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(shots / name, REPO_SCREENSHOTS / name)
