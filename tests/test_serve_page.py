"""The serve page in headless Chromium: type a question, press Ask, read the answers.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the
``selenium`` Python package; skipped with the reason when one is missing.
The real-model test is at the end and marked ``real_model``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from relearn_local.errors import BackendError
from relearn_local.serve import ServeConfig, create_app
from serve_fakes import FakeBackend, running_server

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Without the networking switches Chromium keeps trying to reach Google hosts, which fails on a closed network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1200,900",
]


def _missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} not found; install Debian's {package} package (apt-get install -y {package})"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/")
    WebDriverWait(driver, 30).until(lambda page: page.execute_script("return document.body.dataset.ready") == "true")


def _ask(driver, question: str, panels: list[str], seconds: float = 60) -> dict[str, tuple[str, str]]:
    """Type ``question``, press Ask and return {panel id: (state, text)} once every panel has finished."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "ask").click()

    def finished(page) -> bool:
        states = [page.find_element(By.ID, panel).get_attribute("data-state") for panel in panels]
        return all(state in {"done", "error"} for state in states) and page.find_element(By.ID, "ask").is_enabled()

    WebDriverWait(driver, seconds).until(finished)
    return {
        panel: (driver.find_element(By.ID, panel).get_attribute("data-state"),
                driver.execute_script("return document.getElementById(arguments[0]).textContent", panel))
        for panel in panels
    }


def test_page_shows_answer(browser):
    from selenium.webdriver.common.by import By

    backend = FakeBackend()
    app = create_app(ServeConfig(model="runs/export/relearn-q4_k_m.gguf", max_question_chars=500), backend=backend)
    with running_server(app) as url:
        _open_page(browser, url)
        model_name = browser.find_element(By.ID, "model-name").text
        original_hidden = browser.execute_script("return document.getElementById('original-panel').hidden")
        max_length = browser.find_element(By.ID, "question").get_attribute("maxlength")
        answers = _ask(browser, "Where does Mara live?", ["answer-unlearned"])
    assert model_name == "relearn-q4_k_m.gguf"
    assert original_hidden is True
    assert max_length == "500"
    assert answers["answer-unlearned"] == ("done", "Answer: Where does Mara live?")
    assert list(backend.requests[-1].messages) == [{"role": "user", "content": "Where does Mara live?"}]


def test_page_compares_models(browser, tmp_path):
    from selenium.webdriver.common.by import By

    unlearned = FakeBackend(prefix="I cannot share that")
    original = FakeBackend(model="base", prefix="Mara lives at 12 Harbour Road")
    app = create_app(ServeConfig(model="relearn.gguf", compare="gemma3-270m"), backend=unlearned,
                     compare_backend=original)
    with running_server(app) as url:
        _open_page(browser, url)
        original_hidden = browser.execute_script("return document.getElementById('original-panel').hidden")
        original_name = browser.find_element(By.ID, "original-model").text
        answers = _ask(browser, "Where?", ["answer-unlearned", "answer-original"])
        browser.save_screenshot(str(tmp_path / "compare.png"))
    assert original_hidden is False
    assert original_name == "gemma3-270m"
    assert answers["answer-unlearned"] == ("done", "I cannot share that: Where?")
    assert answers["answer-original"] == ("done", "Mara lives at 12 Harbour Road: Where?")
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_page_shows_server_error(browser):
    backend = FakeBackend()
    backend.fail_with = BackendError("llama.cpp ran out of context")
    app = create_app(ServeConfig(model="relearn.gguf"), backend=backend)
    with running_server(app) as url:
        _open_page(browser, url)
        answers = _ask(browser, "Who is Tomasz?", ["answer-unlearned"])
        backend.fail_with = None
        retry = _ask(browser, "Who is Tomasz?", ["answer-unlearned"])
    assert answers["answer-unlearned"] == ("error", "the model backend failed: llama.cpp ran out of context")
    assert retry["answer-unlearned"] == ("done", "Answer: Who is Tomasz?")


@pytest.mark.real_model
def test_page_real_model(browser):
    """The embedded Gemma 3 270M through llama.cpp: the page shows the same answer the API returns."""
    from relearn_local.backends import get_backend

    backend = get_backend("llamacpp", model=None)
    try:
        app = create_app(ServeConfig(model="gemma3-270m", max_tokens=32), backend=backend)
        with running_server(app) as url:
            _open_page(browser, url)
            answers = _ask(browser, "What is the capital of France?", ["answer-unlearned"], seconds=240)
            api = httpx.post(f"{url}/unlearn/", json={"question": "What is the capital of France?"}, timeout=240)
    finally:
        backend.close()
    state, text = answers["answer-unlearned"]
    assert state == "done"
    assert text.strip()
    assert "<end_of_turn>" not in text
    assert "<start_of_turn>" not in text
    assert text == api.json()["response"]
