"""End to end in a real browser: `streamlit run app.py` on a free localhost port, headless Chromium (the Debian
`chromium` and `chromium-driver` packages; nothing is downloaded), the real bundled model on the demo warehouse.

Asks a question and, while its answer is being written, a second one: both answers stay on the page as a thread,
with their tables and charts, and both are in the query log in order. Clicks thumbs-up and finds the rating in
the log. Then SIGTERM mid-answer: the server is gone within a few seconds.
And the app with NL2SQL_SERVER, answered by `nl2sql serve` in another process.
Screenshots go to $NL2SQL_TEST_ARTIFACTS (default: the test's tmp dir); their paths are printed.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving import free_port, wait_until_up

pytestmark = [pytest.mark.browser, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUESTION = "How many stores do we have in each region?"
QUESTION2 = "How many customers are there in each segment?"
ANSWER_WAIT = 900  # the first question loads the model (and converts the GGUF once, about a minute)


@pytest.fixture
def server(tmp_path):
    """(url, query log path, server log path, process) of `streamlit run app.py` on a free localhost port."""
    yield from _streamlit(tmp_path, {})


def _streamlit(tmp_path, extra_env: dict):
    port = free_port()
    env = {**os.environ, "NL2SQL_QUERY_LOG": str(tmp_path / "querylog.sqlite"),
           "NL2SQL_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", **extra_env}
    out = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/_stcore/health", proc, tmp_path / "streamlit.log")
        yield url, Path(env["NL2SQL_QUERY_LOG"]), tmp_path / "streamlit.log", proc
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


MAIN = '[data-testid="stMainBlockContainer"]'
BOX = '[data-testid="stChatInputTextArea"]'
STATUS = '[data-testid="stExpanderIconSpinner"]'  # the running st.status: an answer being written


def _in_main(browser, css):
    from selenium.webdriver.common.by import By
    return browser.find_element(By.CSS_SELECTOR, MAIN).find_elements(By.CSS_SELECTOR, css)


def _ask(browser, question):
    """Type a question into the chat box; the box is found afresh (a rerun may redraw it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    box = WebDriverWait(browser, 120).until(
        lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, BOX) if b.is_enabled()])[0]
    box.send_keys(question)
    box.send_keys(Keys.ENTER)


def _open(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(url)
    WebDriverWait(browser, 120).until(  # the demo warehouse is open
        lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, BOX) if b.is_enabled()])


def test_two_questions_thread_chart_and_rating_in_chromium(server, browser, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, log_path, server_log, _ = server
    main = (By.CSS_SELECTOR, MAIN)

    def in_main(css):
        return _in_main(browser, css)

    def failed():
        alerts = [a.text for a in in_main('[data-testid="stAlertContainer"], [data-testid="stException"]')]
        return [a for a in alerts if a.strip()]

    _open(browser, url)
    _ask(browser, QUESTION)
    # the second question is typed while the first is being answered (the first loads the model: a while)
    WebDriverWait(browser, 60).until(lambda d: in_main(STATUS))
    _ask(browser, QUESTION2)
    WebDriverWait(browser, 60).until(lambda d: "Queued" in d.find_element(*main).text
                                     or len(in_main('[data-testid="stDataFrame"]')) >= 2)

    def answered(_):
        if failed():
            return True
        return len(in_main('[data-testid="stDataFrame"]')) >= 2 and len(in_main('[data-testid="stVegaLiteChart"]')) >= 2 \
            and len(in_main('[data-testid="stFeedbackButton"]')) >= 2 and not in_main(STATUS)
    shots = _artifacts(tmp_path)
    try:
        WebDriverWait(browser, ANSWER_WAIT, poll_frequency=1).until(answered)
    except TimeoutException:
        browser.save_screenshot(str(shots / "app-timeout.png"))
        pytest.fail(f"no two answers on the page (screenshot {shots / 'app-timeout.png'}):\n"
                    f"{browser.find_element(*main).text[-2000:]}\n{server_log.read_text()[-2000:]}")
    assert not failed(), f"{failed()}\n{server_log.read_text()[-3000:]}"
    text = browser.find_element(*main).text
    assert QUESTION in text and QUESTION2 in text and text.index(QUESTION) < text.index(QUESTION2)  # a thread
    codes = [c.text.lower() for c in in_main('[data-testid="stCode"]')]
    assert len(codes) == 2 and "region" in codes[0] and "customers" in codes[1], codes
    chart = in_main('[data-testid="stVegaLiteChart"]')[0]
    WebDriverWait(browser, 30).until(lambda d: chart.find_elements(By.CSS_SELECTOR, "canvas, svg"))

    thumbs_up = in_main('[data-testid="stFeedbackButton"]')[0]  # the first answer's: earlier answers stay usable
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", thumbs_up)
    thumbs_up.click()

    def rated(_):
        if not log_path.exists():
            return False
        con = sqlite3.connect(log_path, timeout=10)
        try:
            rows = con.execute("SELECT question, sql, db, executed, model, adapter, latency, rating FROM entries "
                               "ORDER BY id").fetchall()
        finally:
            con.close()
        return rows if len(rows) == 2 and rows[0][-1] is not None else False
    [first, second] = WebDriverWait(browser, 30).until(rated)
    (question, sql, db, executed, model, adapter, latency, rating) = first
    assert (question, db, executed, rating) == (QUESTION, "demo", 1, 1)
    assert "region" in sql.lower() and model and adapter and latency > 0
    assert second[0] == QUESTION2 and second[3] == 1 and second[-1] is None
    WebDriverWait(browser, 30).until(lambda d: "Saved — thank you." in d.find_element(*main).text)
    ask_png = shots / "app-ask.png"
    browser.save_screenshot(str(ask_png))

    browser.get(url + "/team")
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"]')) >= 3)
    team_png = shots / "app-team.png"
    browser.save_screenshot(str(team_png))
    print(f"\nscreenshots: {ask_png} {team_png}")
    assert ask_png.stat().st_size > 10_000 and team_png.stat().st_size > 10_000


def test_sigterm_stops_the_server_mid_answer(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, _, server_log, proc = server
    _open(browser, url)
    _ask(browser, QUESTION)  # loads the model
    WebDriverWait(browser, ANSWER_WAIT, poll_frequency=0.5).until(
        lambda d: _in_main(browser, '[data-testid="stDataFrame"]'))
    _ask(browser, QUESTION2)  # SIGTERM while this one is being written
    WebDriverWait(browser, 60, poll_frequency=0.1).until(lambda d: _in_main(browser, STATUS))
    stage = _in_main(browser, STATUS)[0].find_element(By.XPATH, "./ancestor::summary").text
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"streamlit still running 30 s after SIGTERM:\n{server_log.read_text()[-3000:]}")
    took = time.monotonic() - t
    print(f"\nstopped {took:.1f} s after SIGTERM during “{stage}”")
    assert not stage.startswith(("Loading", "Waiting"))  # the model loaded and at work on this question
    assert took <= 5, f"streamlit took {took:.1f} s to stop after SIGTERM"
    assert proc.returncode == 0, server_log.read_text()[-3000:]  # not aborted from native code


def test_the_app_on_nl2sql_serve_in_chromium(tmp_path, browser):
    """NL2SQL_SERVER: the app's page asks `nl2sql serve` (the bundled model there, none in the app), a second
    question typed during the first is queued, and both answers and a rating land in the server's query log with
    the app as the client."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from serving import ServeProcess
    server_log = tmp_path / "served-querylog.sqlite"
    srv = ServeProcess(tmp_path, {"NL2SQL_QUERY_LOG": str(server_log), "NL2SQL_DATA_DIR": str(tmp_path / "data"),
                                  "NL2SQL_API_TOKEN": "browser-token"}).start()
    app = _streamlit(tmp_path, {"NL2SQL_SERVER": srv.url, "NL2SQL_API_TOKEN": "browser-token"})
    try:
        url, app_log, streamlit_log, _ = next(app)
        _open(browser, url)
        _ask(browser, QUESTION)
        WebDriverWait(browser, 60).until(lambda d: _in_main(browser, STATUS))
        _ask(browser, QUESTION2)
        WebDriverWait(browser, ANSWER_WAIT, poll_frequency=1).until(
            lambda d: len(_in_main(browser, '[data-testid="stDataFrame"]')) >= 2 and not _in_main(browser, STATUS))
        alerts = [a.text for a in _in_main(browser, '[data-testid="stAlertContainer"], [data-testid="stException"]')]
        assert not [a for a in alerts if a.strip()], f"{alerts}\n{streamlit_log.read_text()[-3000:]}"
        text = browser.find_element(By.CSS_SELECTOR, MAIN).text
        assert text.index(QUESTION) < text.index(QUESTION2)
        _in_main(browser, '[data-testid="stFeedbackButton"]')[0].click()

        def rated(_):
            con = sqlite3.connect(server_log, timeout=10)
            try:
                rows = con.execute("SELECT question, executed, client, rating FROM entries ORDER BY id").fetchall()
            finally:
                con.close()
            return rows if len(rows) == 2 and rows[0][-1] is not None else False
        [first, second] = WebDriverWait(browser, 30).until(rated)
        assert (first[0], first[1], first[3]) == (QUESTION, 1, 1) and first[2].startswith("nl2sql-app ")
        assert second[0] == QUESTION2 and second[1] == 1
        assert not app_log.exists()  # the app wrote no query log of its own
    finally:
        app.close()
        srv.stop(signal.SIGKILL)
