"""The review page in a real headless Chromium (Debian's chromium + chromium-driver, Selenium):
keyboard verdicts, undo, reload resumes, and a SIGKILLed server loses no acknowledged verdict.

Set GROUNDV_AUDIT_SCREENSHOT=path.png to keep a screenshot of the page (docs/audit.png is made so).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.quality.sample import draw_sample
from pipelines.quality.store import read_verdicts
from pipelines.storage.fs import StorageSpec

pytestmark = [pytest.mark.browser, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,800"]


def start_server(out: str, name: str, port: int = 0) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipelines/cli/audit.py"), "--output", out, "serve",
                             "--name", name, "--auditor", "alice", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "http://" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split("at ", 1)[1].split()[0]


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromium-driver are required (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, cond, timeout: float = 20.0, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(cond)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


def press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def acked(driver) -> list[dict]:
    return driver.execute_script("return window.acked")


def give(driver, *keys: str) -> None:
    """Press the keys of one verdict (or undo) and wait until it is acknowledged and the next pair shown."""
    before = driver.execute_script("return document.getElementById('status').textContent")
    for k in keys:
        press(driver, k)
    wait(driver, f"return document.body.dataset.idle === '1' && document.getElementById('status').textContent !== "
                 f"{before!r} && document.getElementById('status').dataset.state === 'saved'", what=keys)


def shown_key(driver) -> str:
    return driver.execute_script("return document.getElementById('item').dataset.key")


def test_review_in_browser_resume_and_sigkill(audit_build, browser, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(audit_build, out)
    sample = draw_sample(out, "b1", StorageSpec(), per_task=3, version=1)
    keys = [i["key"] for i in sample["items"]]
    proc, url = start_server(out, "b1")
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    try:
        browser.get(url)
        wait(browser, "return document.body.dataset.ready === '1'", what="page ready")
        assert shown_key(browser) == keys[0]
        first = sample["items"][0]
        assert browser.find_element("id", "instruction").text == first["instruction"]
        assert browser.find_element("id", "task").text == first["task"]
        wait(browser, "const i = document.getElementById('image'); return i.complete && i.naturalWidth > 0",
             what="image decoded")
        if os.environ.get("GROUNDV_AUDIT_SCREENSHOT"):
            browser.save_screenshot(os.environ["GROUNDV_AUDIT_SCREENSHOT"])
        give(browser, "y")
        give(browser, "n", "2")  # wrong, reason 2 = wrong_target
        give(browser, "s")
        give(browser, "y")
        assert shown_key(browser) == keys[4]
        give(browser, "u")  # undo: back to the 4th pair, its verdict retracted
        assert shown_key(browser) == keys[3]
        assert browser.find_element("id", "progress").get_attribute("data-done") == "3"

        browser.refresh()  # reopen: resumes at the first pair without a verdict
        wait(browser, "return document.body.dataset.ready === '1'", what="page ready after reload")
        assert shown_key(browser) == keys[3]
        assert browser.find_element("id", "progress").get_attribute("data-done") == "3"
        give(browser, "y")
        give(browser, "n", "6")  # other
        page_acks = acked(browser)

        os.kill(proc.pid, signal.SIGKILL)  # mid-session, no clean shutdown, lock left behind
        proc.wait(10)
        recs = read_verdicts(out, "b1", StorageSpec())
        by_vid = {r["vid"]: r for r in recs}
        assert len(by_vid) == len(recs) == 6 + 1  # 6 verdicts + 1 undo, each written once
        for a in page_acks:  # every verdict the page saw acknowledged is on disk, as acknowledged
            r = by_vid[a["vid"]]
            assert (r["key"], r["verdict"], r["reason"], r["seq"]) == (a["key"], a["verdict"], a["reason"], a["seq"])

        press(browser, "y")  # server down: not acknowledged, the page keeps retrying
        wait(browser, "return document.getElementById('status').dataset.state === 'retrying'", what="retrying")
        assert len(acked(browser)) == len(page_acks)
        proc, _ = start_server(out, "b1", port)  # the dead server's lock is taken over
        wait(browser, f"return window.acked.length === {len(page_acks) + 1}", what="retried verdict acknowledged")
        recs = read_verdicts(out, "b1", StorageSpec())
        assert len(recs) == 8 and len({r["vid"] for r in recs}) == 8
        current = {r["key"]: r["verdict"] for r in recs if r["verdict"] != "undo"}
        assert current[keys[3]] == "y" and current[keys[5]] == "y" and keys[6] not in current
        assert [r["reason"] for r in recs if r["verdict"] == "n"] == ["wrong_target", "other"]
    finally:
        proc.terminate()
        proc.wait(20)
