"""The rendered HTML leaderboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which ``.ci/run`` installs) opens the pages from ``file://``, the test checks
the console for errors, sorts a column by clicking its header, and saves screenshots (under
pytest's ``tmp_path`` and copied to the repository's git-ignored ``artifacts/`` folder).

Without Chromium the test is skipped, except in CI (``CI`` set), where it must run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from advarena.report.leaderboard import write_leaderboards
from advarena.store import Store

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def _need(what: str, hint: str) -> None:
    """Skip for a missing browser piece, except in CI, where its absence is a failure."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{what} is missing in CI ({hint})")
    pytest.skip(f"{what} is not installed ({hint}); CI installs it")


def _binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        _need("chromium" if not browser else "chromedriver",
              "apt-get install chromium chromium-driver")
    if importlib.util.find_spec("selenium") is None:
        _need("selenium", "pip install -e '.[test]'")
    return browser, driver


def _helpers():
    """The hand-made full store of tests/test_leaderboard.py, loaded by path (nothing is put on
    sys.path)."""
    path = Path(__file__).with_name("test_leaderboard.py")
    spec = importlib.util.spec_from_file_location("advarena_test_leaderboard_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A rendered leaderboard whose rank order differs from the alphabetical one."""
    h = _helpers()
    root = tmp_path_factory.mktemp("site")
    store = Store.open(root / "store")
    try:
        ref = h.full_model(store, "none", 0.1, role="reference")
        h.full_model(store, "zeta-defense", 0.9, reference_key=ref,
                     flag_detail="worst-case accuracy 0.8 at the largest eps 0.3")
        h.full_model(store, "alpha-defense", 0.5, params={"n": 3, "sigma": 0.05},
                     reference_key=ref)
        h.full_model(store, "mid-defense", 0.3, reference_key=ref)
        write_leaderboards(store, root / "out", ("html",))
    finally:
        store.close()
    return root / "out"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, chromedriver = _binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _defenses(driver, table_index: int = 0) -> list[str]:
    from selenium.webdriver.common.by import By

    table = driver.find_elements(By.CSS_SELECTOR, "table.sortable")[table_index]
    return [row.find_elements(By.TAG_NAME, "td")[1].find_element(By.TAG_NAME, "a").text
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(path, ARTIFACTS / name)
    except OSError:  # a read-only checkout still has the copy under tmp_path
        pass
    return path


def test_leaderboard_in_chromium(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    browser.set_window_size(1400, 1000)
    browser.get((site / "leaderboard.html").as_uri())
    assert browser.title == "advarena leaderboard"
    assert _severe(browser) == []
    before = _defenses(browser)
    assert sorted(before) == ["alpha-defense", "mid-defense", "none", "zeta-defense"]
    assert before[0] == "zeta-defense"  # ranked first: flagged, but it clears every interval
    _shot(browser, tmp_path, "leaderboard.png")
    # the page uses the whole 1400 px (no fixed maximum width), and the raised flag is on
    # screen: a line of the sticky defense cell, not a column past the numbers
    box = browser.find_element(By.CSS_SELECTOR, "div.scroll")
    assert browser.execute_script("return arguments[0].getBoundingClientRect().width",
                                  box) > 1300
    flag = browser.find_element(By.CSS_SELECTOR, "td.c2 span.flag")
    assert browser.execute_script(
        "return arguments[0].getBoundingClientRect().right <= window.innerWidth", flag)
    # the header says how many examples stand behind the headline (these hand-made rows have
    # no headline cell: it says that they stand in with the white-box worst case)
    note = browser.find_element(By.CSS_SELECTOR, "p.headline-note").text
    assert "200 test examples" in note and "white-box worst case" in note

    header = next(th for th in browser.find_elements(By.CSS_SELECTOR, "table.sortable th")
                  if th.text.strip().startswith("defense"))
    header.click()
    after = _defenses(browser)
    assert after != before
    assert after == sorted(before)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert _defenses(browser) == sorted(before, reverse=True)
    # a numeric column: clean accuracy, ascending, cells without a number last
    heads = browser.find_elements(By.CSS_SELECTOR, "table.sortable th")
    col = next(i for i, th in enumerate(heads) if th.text.strip().startswith("transfer"))
    heads[col].click()
    cells = [float(row.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-sort"))
             for row in browser.find_elements(By.CSS_SELECTOR, "table.sortable tbody tr")]
    assert cells == sorted(cells) and cells[0] < cells[-1]
    assert _defenses(browser)[-1] == "zeta-defense"
    # the raised flag shows its detail on hover (the title attribute)
    flag = browser.find_element(By.CSS_SELECTOR, "span.flag")
    assert flag.text == "large_eps_not_broken"
    assert "0.8" in flag.get_attribute("title")
    assert _severe(browser) == []

    # a narrow screen: the page does not overflow; the table scrolls inside its box
    browser.set_window_size(420, 900)
    browser.get((site / "leaderboard.html").as_uri())
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    box = browser.find_element(By.CSS_SELECTOR, "div.scroll")
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth",
                                  box)
    # scrolled sideways, the defense column stays in view (sticky)
    browser.execute_script("arguments[0].scrollLeft = arguments[0].scrollWidth", box)
    first = browser.find_element(By.CSS_SELECTOR, "table.sortable tbody td.c2")
    assert browser.execute_script(
        "var r = arguments[0].getBoundingClientRect(), b = arguments[1].getBoundingClientRect();"
        "return r.left >= b.left - 1 && r.left < b.left + 80", first, box)
    _shot(browser, tmp_path, "leaderboard-narrow.png")


def test_detail_page_in_chromium(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    browser.set_window_size(1200, 1000)
    browser.get((site / "leaderboard.html").as_uri())
    link = browser.find_element(By.LINK_TEXT, "alpha-defense")
    link.click()
    assert "details/" in browser.current_url
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("alpha-defense")
    facts = browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "training seed\n0" in facts and "seeds 0" not in facts
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 5
    for img in images:  # every plot loaded from file:// and decoded
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img)
    assert _severe(browser) == []
    _shot(browser, tmp_path, "detail.png")
    browser.set_window_size(420, 900)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    _shot(browser, tmp_path, "detail-narrow.png")
