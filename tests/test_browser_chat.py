"""The chat page in headless Chromium (Debian `chromium` + `chromium-driver`): type a Korean
message, watch the reply stream in, compare it with the engine's answer, take a screenshot.

Set KRLLM_SCREENSHOT_DIR to keep the screenshot (it goes to the test's tmp dir otherwise).
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from krllm.infer.config import ServeConfig
from krllm.infer.startup import make_engine
from krllm.model.load import load
from krllm.infer.sampling import SamplingParams
from krllm.infer.scheduler import Scheduler
from krllm.infer.server import BackgroundServer, create_app
from krllm.infer.testing import tiny_model_dir

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")

MESSAGE = "안녕하세요! 오늘 날씨가 좋네요."
SYSTEM = "당신은 친절한 한국어 도우미입니다."
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tiny_model_dir(tmp_path_factory.mktemp("browser") / "tiny-ko")
    lm = load(d, device="cpu")
    engine = make_engine(lm, max_batch=4)
    # Pace the tiny model like a real one on CPU (~60 tokens/s): the server sends tokens that arrive
    # together as one chunk, and an unpaced tiny model would make the stream arrive in a few pieces.
    step = engine.step
    engine.step = lambda: (time.sleep(0.015), step())[1]
    sched = Scheduler(engine)
    with BackgroundServer(create_app(lm, sched, ServeConfig())) as url:
        yield url, d
    sched.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1100,760", f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _set(driver, element_id, value):
    el = driver.find_element("id", element_id)
    el.clear()
    el.send_keys(str(value))


def test_korean_message_gets_a_streamed_reply(served, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    url, model_dir = served
    # what the server must answer: the same conversation through a separate engine, greedily
    lm = load(model_dir, device="cpu")
    ids = lm.encode_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": MESSAGE}])
    out = make_engine(lm).generate([ids], SamplingParams(temperature=0), MAX_TOKENS)[0]
    expected = lm.decode(out.output)
    assert expected.strip()

    browser.get(url + "/")
    WebDriverWait(browser, 20).until(lambda d: "tiny-ko" in d.find_element("id", "model").text)
    _set(browser, "system", SYSTEM)
    _set(browser, "temperature", 0)
    _set(browser, "max_tokens", MAX_TOKENS)
    # count how often the reply text changes while it streams
    browser.execute_script("""
        window.__updates = 0;
        new MutationObserver(() => { window.__updates++; }).observe(
            document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    """)
    box = browser.find_element("id", "message")
    box.send_keys(MESSAGE)
    assert box.get_attribute("value") == MESSAGE  # Korean typed as is
    browser.find_element("id", "send").click()

    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("const b = document.querySelector('.msg.assistant');"
                                   "return b && b.dataset.state === 'done';"))
    user = browser.execute_script("return document.querySelector('.msg.user .content').textContent")
    reply = browser.execute_script("return document.querySelector('.msg.assistant .content').textContent")
    meta = browser.execute_script("return document.querySelector('.msg.assistant .meta').textContent")
    updates = browser.execute_script("return window.__updates")
    chunks = int(browser.execute_script("return document.querySelector('.msg.assistant').dataset.chunks"))
    errors = browser.find_elements("css selector", ".msg.error")

    shot_dir = Path(os.environ.get("KRLLM_SCREENSHOT_DIR") or tmp_path)
    shot_dir.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot_dir / "chat_page.png"))

    assert not errors, errors[0].text
    assert user == MESSAGE
    assert reply == expected
    # the reply arrived as many SSE deltas, each written into the bubble as it came (the browser may
    # coalesce repaints when pieces arrive together, so DOM mutations are only checked to exist)
    assert chunks > 5, chunks
    assert updates >= 2, updates
    assert "토큰" in meta and f"{len(out.output)} 토큰" in meta
    assert (shot_dir / "chat_page.png").stat().st_size > 10_000

    # the conversation continues with history: a second turn sees the first
    box.send_keys("고마워요")
    browser.find_element("id", "send").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("const b = document.querySelectorAll('.msg.assistant');"
                                   "return b.length === 2 && b[1].dataset.state === 'done';"))
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": MESSAGE},
               {"role": "assistant", "content": expected}, {"role": "user", "content": "고마워요"}]
    out2 = make_engine(lm).generate([lm.encode_chat(history)], SamplingParams(temperature=0), MAX_TOKENS)[0]
    second = browser.execute_script("return document.querySelectorAll('.msg.assistant .content')[1].textContent")
    assert second == lm.decode(out2.output)
