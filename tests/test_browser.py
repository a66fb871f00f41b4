"""End to end in a real browser: `streamlit run app.py` on a free localhost port, headless Chromium (the Debian
`chromium` and `chromium-driver` packages; nothing is downloaded), the real bundled model on the demo warehouse.

Asks a question, waits for the table and the chart, clicks thumbs-up and finds the rating in the query log.
Screenshots go to $NL2SQL_TEST_ARTIFACTS (default: the test's tmp dir); their paths are printed.
"""
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUESTION = "How many stores do we have in each region?"
ANSWER_WAIT = 900  # the first question loads the model (and converts the GGUF once, about a minute)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "NL2SQL_QUERY_LOG": str(tmp_path / "querylog.sqlite"),
           "NL2SQL_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    out = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, Path(env["NL2SQL_QUERY_LOG"]), tmp_path / "streamlit.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()


@pytest.fixture
def browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install -y chromium chromium-driver (.ci/run does).")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1900",
                "--disable-gpu", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _artifacts(tmp_path) -> Path:
    d = Path(os.environ.get("NL2SQL_TEST_ARTIFACTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_ask_see_table_and_chart_rate_it_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    url, log_path, server_log = server
    main = (By.CSS_SELECTOR, '[data-testid="stMainBlockContainer"]')

    def in_main(css):
        return browser.find_element(*main).find_elements(By.CSS_SELECTOR, css)

    def failed():
        alerts = [a.text for a in in_main('[data-testid="stAlertContainer"], [data-testid="stException"]')]
        return [a for a in alerts if a.strip()]

    browser.get(url)
    box = WebDriverWait(browser, 120).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stChatInputTextArea"]'))[0]
    WebDriverWait(browser, 120).until(lambda d: box.is_enabled())  # the demo warehouse is open
    box.send_keys(QUESTION)
    box.send_keys(Keys.ENTER)

    def answered(_):
        if failed():
            return True
        return in_main('[data-testid="stDataFrame"]') and in_main('[data-testid="stVegaLiteChart"]') and \
            in_main('[data-testid="stFeedbackButton"]')
    WebDriverWait(browser, ANSWER_WAIT, poll_frequency=1).until(answered)
    shots = _artifacts(tmp_path)
    assert not failed(), f"{failed()}\n{server_log.read_text()[-3000:]}"
    assert QUESTION in browser.find_element(*main).text
    assert "region" in in_main('[data-testid="stCode"], code')[0].text.lower()
    chart = in_main('[data-testid="stVegaLiteChart"]')[0]
    WebDriverWait(browser, 30).until(lambda d: chart.find_elements(By.CSS_SELECTOR, "canvas, svg"))

    thumbs_up = in_main('[data-testid="stFeedbackButton"]')[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", thumbs_up)
    thumbs_up.click()

    def rated(_):
        if not log_path.exists():
            return False
        con = sqlite3.connect(log_path, timeout=10)
        try:
            return con.execute("SELECT question, sql, db, executed, model, adapter, latency, rating FROM entries "
                               "WHERE rating IS NOT NULL").fetchall()
        finally:
            con.close()
    [(question, sql, db, executed, model, adapter, latency, rating)] = WebDriverWait(browser, 30).until(rated)
    assert (question, db, executed, rating) == (QUESTION, "demo", 1, 1)
    assert "region" in sql.lower() and model and adapter and latency > 0
    WebDriverWait(browser, 30).until(lambda d: "Saved — thank you." in d.find_element(*main).text)
    ask_png = shots / "app-ask.png"
    browser.save_screenshot(str(ask_png))

    browser.get(url + "/team")
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"]')) >= 3)
    team_png = shots / "app-team.png"
    browser.save_screenshot(str(team_png))
    print(f"\nscreenshots: {ask_png} {team_png}")
    assert ask_png.stat().st_size > 10_000 and team_png.stat().st_size > 10_000
