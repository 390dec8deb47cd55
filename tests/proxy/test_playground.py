"""The playground page in a real browser: headless Chromium driven by selenium, against a
real proxy and the fake R1 upstream on loopback.

Each step leaves a screenshot in the test's tmp_path (`pytest --basetemp=DIR` keeps them
somewhere findable). One browser serves the module; each test opens the page afresh.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ProxyServer, data_url, fresh_png
from tests.upstream_server import FakeUpstream, Reply, r1_events

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1500",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    # An explicit driver path: selenium never runs Selenium Manager (which would download).
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


class Playground:
    """The page, seen through its data-testid hooks."""

    def __init__(self, driver: WebDriver, base_url: str, shots: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots
        self.shot_count = 0

    def open(self) -> Playground:
        # Through the root redirect, as a user typing the bare address would.
        self.driver.get(self.base_url + "/")
        self.wait(lambda: self.driver.current_url.endswith("/playground"))
        self.wait(lambda: self.driver.execute_script("return document.readyState") == "complete")
        return self

    def find(self, testid: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def text(self, testid: str) -> str:
        # textContent, not .text: the latter depends on layout (hidden, scrolled).
        return str(self.find(testid).get_attribute("textContent"))

    def pick(self, *paths: Path) -> None:
        count = len(self.driver.find_elements(By.CSS_SELECTOR, "#thumbnails li"))
        self.find("image-input").send_keys("\n".join(str(path) for path in paths))
        self.wait(
            lambda: (
                len(self.driver.find_elements(By.CSS_SELECTOR, "#thumbnails li"))
                == count + len(paths)
            )
        )

    def ask(self, question: str) -> None:
        prompt = self.find("prompt-input")
        prompt.clear()
        prompt.send_keys(question)
        self.find("send-button").click()

    def wait(
        self, condition: Callable[[], object], timeout: float = 20, poll: float = 0.05
    ) -> None:
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=poll).until(lambda _: condition())
        except TimeoutException:
            self.shot("timeout")
            raise

    def wait_done(self) -> None:
        self.wait(lambda: self.text("status").startswith(("Done", "Failed")))

    def error_fields(self) -> dict[str, str]:
        cells = self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="error-output"] dd')
        return {str(cell.get_attribute("data-field")): cell.text for cell in cells}

    def shot(self, name: str) -> Path:
        self.shot_count += 1
        path = self.shots / f"{self.shot_count:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def playground(browser: WebDriver, tmp_path: Path) -> Callable[[ProxyServer], Playground]:
    def open_on(server: ProxyServer) -> Playground:
        return Playground(browser, server.url, tmp_path).open()

    return open_on


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


REASONING = ("The user ", "sent a photo ", "of a coffee cup.")
ANSWER = ("A cup ", "of coffee ", "on a ", "saucer, ", "seen from ", "above.")


def test_answer_streams_in_and_the_second_turn_keeps_the_image(
    playground: Callable[[ProxyServer], Playground],
    proxy: ProxyServer,
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    events = r1_events(reasoning=REASONING, answer=ANSWER)
    upstream.script(Reply(events=events, chunk_delay_s=0.25))
    page = playground(proxy)
    page.shot("opened")
    assert page.find("api-key-input").is_displayed() is False  # no client keys: no key field

    photo = write(tmp_path, "coffee.png", fresh_png(1601))  # never sent before: a cache miss
    page.pick(photo)
    page.ask("What is in this picture?")

    # The first words are on screen while the upstream is still sending the rest.
    page.wait(lambda: "A cup" in page.text("answer-output"))
    shown, sent = page.text("answer-output"), len(upstream.chunk_sent_at)
    page.shot("streaming")
    assert "above." not in shown
    assert sent < len(events)
    # Reasoning and answer stream into their own panes.
    assert page.text("reasoning-output") == "".join(REASONING)

    page.wait_done()
    page.shot("answered")
    assert page.text("status").startswith("Done")
    assert page.text("answer-output") == "".join(ANSWER)
    assert page.text("reasoning-output") == "".join(REASONING)
    assert page.find("error-output").is_displayed() is False

    # The upstream body shown is exactly what the upstream received.
    page.wait(lambda: "characters" in page.text("upstream-size"))
    received = upstream.requests[-1]
    shown_body = json.loads(page.text("upstream-body"))
    assert shown_body == received.json
    assert "<image>" in shown_body["messages"][0]["content"]
    assert f"{len(received.body.decode()):,} characters" in page.text("upstream-size")
    # Server-Timing reached the page; a new image was decoded and encoded.
    stages = page.text("server-timing")
    assert "encode" in stages and "proxy" in stages
    assert page.find("cache-status").get_attribute("data-cache") == "miss"

    # Second turn: the earlier image goes along as an image_url part, and the proxy sends
    # it upstream as a retained embedding.
    upstream.script(Reply(events=r1_events(answer=("Still ", "coffee."))))
    page.ask("And the saucer?")
    page.wait_done()
    page.wait(lambda: "characters" in page.text("upstream-size"))
    page.shot("second-turn")
    assert page.text("answer-output") == "Still coffee."
    second = upstream.requests[-1].json
    assert json.loads(page.text("upstream-body")) == second
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert "<retain_image_emb>" in second["messages"][0]["content"]
    assert second["messages"][1]["content"] == "".join(ANSWER)
    assert second["messages"][2]["content"] == "And the saucer?"
    assert "<retain_image_emb>" in page.text("upstream-body")
    assert page.find("cache-status").get_attribute("data-cache") == "hit"
    history = page.driver.find_elements(By.CSS_SELECTOR, '[data-testid="history"] li')
    assert len(history) == 4

    # Nothing was requested from any origin but the proxy's.
    origins = page.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
    )
    assert set(origins) == {proxy.url}


def test_bad_image_shows_the_api_error(
    playground: Callable[[ProxyServer], Playground],
    proxy: ProxyServer,
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    broken = write(tmp_path, "broken.png", b"\x89PNG\r\n\x1a\n this is not a picture")
    page = playground(proxy)
    page.pick(broken)
    page.ask("What is this?")
    page.wait(lambda: page.find("error-output").is_displayed())
    page.wait_done()
    page.shot("bad-image")

    # What the API itself answers for the same image.
    expected = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(broken)}}],
                }
            ]
        },
        timeout=30,
    )
    assert expected.status_code == 400
    error = expected.json()["error"]
    fields = page.error_fields()
    assert fields["message"] == error["message"]
    assert fields["type"] == error["type"] == "invalid_request_error"
    assert fields["code"] == error["code"]
    assert page.text("error-output").startswith("Error 400")
    assert page.text("answer-output") == ""
    assert page.text("status").startswith("Failed")
    assert page.find("cache-status").get_attribute("data-cache") == "unknown"
    assert upstream.requests == []  # nothing went upstream


def test_model_output_is_text_never_html(
    playground: Callable[[ProxyServer], Playground],
    proxy: ProxyServer,
    upstream: FakeUpstream,
) -> None:
    attack = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    upstream.script(
        Reply(events=r1_events(reasoning=("<b>bold?</b> ",), answer=("Look: ", attack)))
    )
    page = playground(proxy)
    page.ask("Say something nasty.")
    page.wait_done()
    page.shot("xss")

    assert page.text("answer-output") == "Look: " + attack
    assert page.text("reasoning-output") == "<b>bold?</b> "
    for pane in ("answer-output", "reasoning-output", "history"):
        elements = page.driver.find_elements(
            By.CSS_SELECTOR,
            f'[data-testid="{pane}"] img, [data-testid="{pane}"] script, [data-testid="{pane}"] b',
        )
        assert elements == [], pane
    time.sleep(0.3)  # an onerror handler would have run by now
    assert page.driver.title == "clip-proxy playground"
    # And the policy holds on its own: an inline script put in the page does not run.
    ran = page.driver.execute_script(
        "const s = document.createElement('script');"
        "s.textContent = 'window.inlineRan = true';"
        "document.body.append(s);"
        "return window.inlineRan === true;"
    )
    assert ran is False


def test_with_client_keys_the_page_asks_for_one(
    playground: Callable[[ProxyServer], Playground],
    start_proxy: Callable[..., ProxyServer],
    upstream: FakeUpstream,
) -> None:
    server = start_proxy(api_keys="sk-playground-key")
    page = playground(server)
    page.wait(lambda: page.find("api-key-input").is_displayed())
    page.shot("key-asked")

    page.ask("Hello?")  # no key yet: the API's 401 is shown
    page.wait_done()
    page.shot("key-refused")
    fields = page.error_fields()
    assert fields["type"] == "authentication_error"
    assert fields["code"] == "invalid_api_key"
    assert page.text("error-output").startswith("Error 401")
    assert upstream.requests == []

    page.find("api-key-input").send_keys("sk-playground-key")
    page.ask("Hello again?")
    page.wait_done()
    page.shot("key-accepted")
    assert page.text("answer-output") == "A cat on a sofa."
    assert upstream.requests[-1].json["messages"][-1]["content"] == "Hello again?"
    storage = page.driver.execute_script(
        "return [sessionStorage.getItem('clip-proxy-playground-key'), localStorage.length,"
        " document.cookie]"
    )
    assert storage == ["sk-playground-key", 0, ""]

    # Reloaded in the same tab, the key is still there; the upstream never sees it.
    page.open()
    assert page.find("api-key-input").get_attribute("value") == "sk-playground-key"
    assert "sk-playground-key" not in json.dumps(upstream.requests[-1].headers)


# The page's files and headers, without a browser.


def test_page_headers_and_files(proxy: ProxyServer) -> None:
    root = httpx.get(proxy.url + "/", timeout=10)
    assert root.status_code == 302
    assert root.headers["location"] == "/playground"

    page = httpx.get(proxy.url + "/playground", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "connect-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for testid in (
        "image-input",
        "prompt-input",
        "send-button",
        "reasoning-output",
        "answer-output",
        "live-turn",
        "attached-summary",
        "upstream-readable",
        "upstream-raw-toggle",
        "upstream-body",
        "error-output",
        "api-key-input",
    ):
        assert f'data-testid="{testid}"' in page.text

    folder = Path(__file__).parents[2] / "app" / "playground"
    for name in ("index.html", "playground.js", "playground.css"):
        served = httpx.get(f"{proxy.url}/playground/{name}", timeout=10)
        if name == "index.html":
            served = page
        assert served.status_code == 200
        assert served.content == (folder / name).read_bytes()
        # No third-party requests, and nothing that turns text into markup or code.
        assert "http://" not in served.text and "https://" not in served.text
        assert "<script>" not in served.text  # no inline script for the CSP to refuse
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in served.text, (name, sink)

    config = httpx.get(proxy.url + "/playground/config.json", timeout=10).json()
    assert config == {"auth_required": False, "prompt_format": "inline"}


def test_keys_from_a_file_make_the_page_ask_too(
    start_proxy: Callable[..., ProxyServer], tmp_path: Path
) -> None:
    keys = write(tmp_path, "keys.txt", b"# client keys\nsk-from-file\n")
    server = start_proxy(api_keys_file=keys, wait_ready=False)
    config = httpx.get(server.url + "/playground/config.json", timeout=10).json()
    assert config["auth_required"] is True
    page = httpx.get(server.url + "/playground", timeout=10)
    assert page.status_code == 200  # the page itself needs no key; the API calls do


def test_playground_can_be_turned_off(start_proxy: Callable[..., ProxyServer]) -> None:
    server = start_proxy(playground=False, wait_ready=False)
    for path in ("/", "/playground", "/playground/playground.js"):
        response = httpx.get(server.url + path, timeout=10)
        assert response.status_code == 404, path
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"] == f"Invalid URL (GET {path})"


def test_images_can_be_pasted_and_dropped(
    playground: Callable[[ProxyServer], Playground],
    proxy: ProxyServer,
    upstream: FakeUpstream,
) -> None:
    page = playground(proxy)
    # The events a browser fires for Ctrl+V and for a drop, carrying real PNG files.
    page.driver.execute_script(
        """
        const [pasted, dropped] = arguments;
        const file = (b64, name) => new File(
            [Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type: "image/png" });
        const paste = new DataTransfer();
        paste.items.add(file(pasted, "pasted.png"));
        document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: paste }));
        const drop = new DataTransfer();
        drop.items.add(file(dropped, "dropped.png"));
        document.getElementById("drop-zone").dispatchEvent(
            new DragEvent("drop", { dataTransfer: drop, bubbles: true, cancelable: true }));
        """,
        base64.b64encode(fresh_png(1602)).decode(),
        base64.b64encode(fresh_png(1603)).decode(),
    )
    page.wait(lambda: len(page.driver.find_elements(By.CSS_SELECTOR, "#thumbnails li")) == 2)
    page.shot("pasted-and-dropped")
    page.ask("Two pictures?")
    page.wait_done()
    assert page.text("status").startswith("Done")
    content = upstream.requests[-1].json["messages"][0]["content"]
    assert content.count("<image>") == 2
    assert page.find("cache-status").get_attribute("data-cache") == "miss"


def test_stop_ends_the_stream_and_the_upstream_request(
    playground: Callable[[ProxyServer], Playground],
    proxy: ProxyServer,
    upstream: FakeUpstream,
) -> None:
    events = r1_events(answer=tuple(f"word{i} " for i in range(40)))
    upstream.script(Reply(events=events, chunk_delay_s=0.2))
    page = playground(proxy)
    page.ask("Talk for a while.")
    page.wait(lambda: "word0" in page.text("answer-output"))
    page.find("stop-button").click()
    page.wait(lambda: page.text("status").startswith("Stopped"))
    page.shot("stopped")
    # The proxy noticed the browser leave and closed its upstream connection mid-stream.
    connection = upstream.requests[-1].connection
    page.wait(lambda: connection in upstream.closed_connections, timeout=10)
    assert len(upstream.chunk_sent_at) < len(events)
    assert page.find("error-output").is_displayed() is False
    assert page.driver.find_elements(By.CSS_SELECTOR, '[data-testid="history"] li') == []
    assert page.find("send-button").is_enabled()


def test_keepalive_pings_while_the_model_thinks_are_ignored(
    playground: Callable[[ProxyServer], Playground],
    start_proxy: Callable[..., ProxyServer],
    upstream: FakeUpstream,
) -> None:
    server = start_proxy(ping_interval_s=0.1)
    upstream.script(Reply(first_chunk_delay_s=0.8))  # headers, then silence: `: ping` comments
    page = playground(server)
    page.ask("Think first.")
    page.wait_done()
    assert page.text("status").startswith("Done")
    assert page.text("reasoning-output") == "The user sent a cat."
    assert page.text("answer-output") == "A cat on a sofa."
    assert page.find("error-output").is_displayed() is False


def test_the_picker_says_what_is_attached(
    playground: Callable[[ProxyServer], Playground], proxy: ProxyServer, tmp_path: Path
) -> None:
    page = playground(proxy)
    assert page.text("attached-summary") == "No images attached."
    first = write(tmp_path, "first-cup.png", fresh_png(1701))
    second = write(tmp_path, "second-cup.png", fresh_png(1702))
    page.pick(first, second)
    page.shot("attached")
    summary = page.text("attached-summary")
    assert summary.startswith("2 images attached")
    assert "first-cup.png" in summary and "second-cup.png" in summary
    # The native input's own "No file chosen" is not what the user reads.
    area = page.driver.execute_script(
        "const box = arguments[0].getBoundingClientRect(); return box.width * box.height",
        page.find("image-input"),
    )
    assert area <= 1
    page.ask("Two cups?")
    page.wait_done()
    assert page.text("attached-summary") == "No images attached."


def test_the_answer_appears_once_in_the_conversation(
    playground: Callable[[ProxyServer], Playground],
    proxy: ProxyServer,
    upstream: FakeUpstream,
) -> None:
    answer = "A single answer, shown once."
    upstream.script(Reply(events=r1_events(answer=(answer,))))
    page = playground(proxy)
    page.ask("Say it once.")
    page.wait_done()
    page.shot("answered-once")
    seen = page.driver.execute_script("return document.body.innerText")
    assert seen.count(answer) == 1
    assert page.text("answer-output") == answer
    in_history = page.driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="history"] [data-testid="answer-output"]'
    )
    assert len(in_history) == 1


def test_the_upstream_body_reads_as_text_with_raw_json_one_click_away(
    playground: Callable[[ProxyServer], Playground], proxy: ProxyServer
) -> None:
    page = playground(proxy)
    prompt = page.find("prompt-input")
    prompt.send_keys("first line")
    prompt.send_keys(webdriver.common.keys.Keys.SHIFT, webdriver.common.keys.Keys.ENTER)
    prompt.send_keys("second line")
    page.find("send-button").click()
    page.wait_done()
    page.wait(lambda: "characters" in page.text("upstream-size"))
    readable = page.find("upstream-readable")
    assert readable.is_displayed() and not page.find("upstream-body").is_displayed()
    text = readable.text
    assert "messages[0].content:" in text
    assert "first line\nsecond line" in text and "\\n" not in text  # real line breaks
    page.find("upstream-raw-toggle").click()
    page.shot("raw-json")
    raw = page.find("upstream-body")
    assert raw.is_displayed() and not readable.is_displayed()
    assert json.loads(raw.text)["messages"][0]["content"] == "first line\nsecond line"
    page.find("upstream-raw-toggle").click()
    assert readable.is_displayed()


def test_the_timing_table_shows_ocr_when_it_ran(
    playground: Callable[[ProxyServer], Playground],
    start_proxy: Callable[..., ProxyServer],
    tmp_path: Path,
) -> None:
    server = start_proxy(prompt_preset="describe", ocr_enabled=True, ocr_threads=1)
    page = playground(server)
    page.pick(write(tmp_path, "cup.png", fresh_png(1801)))
    page.ask("Any text?")
    page.wait_done()
    stages = [
        cell.text
        for cell in page.driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="server-timing"] td:first-child'
        )
    ]
    assert "ocr" in stages and "encode" in stages


def test_a_pdf_and_a_text_file_go_as_documents(
    playground: Callable[[ProxyServer], Playground],
    proxy: ProxyServer,
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    from tests import pdfs

    data, written = pdfs.english_pdf(pages=2, lines=4, seed=141)
    upstream.script(Reply(events=r1_events(answer=("Two ", "documents."))))
    page = playground(proxy)

    page.pick(write(tmp_path, "contract.pdf", data), write(tmp_path, "notes.md", b"# Notes\n"))
    chips = [chip.text for chip in page.driver.find_elements(By.CSS_SELECTOR, ".file-chip")]
    page.shot("documents-picked")
    assert chips == ["📄 contract.pdf · 2 pages", "📄 notes.md"]
    page.ask("Compare them")
    page.wait_done()

    assert page.text("answer-output") == "Two documents."
    content = upstream.requests[-1].json["messages"][0]["content"]
    assert content.startswith(
        'Compare them\n<document index="1" name="contract.pdf" pages="2" read="text:2">'
    )
    assert content.endswith('name="notes.md" pages="1" read="text:1">\n# Notes\n\n</document>')
    assert written[1].splitlines()[0] in content


def test_the_page_shows_each_images_description(
    playground: Callable[[ProxyServer], Playground],
    start_proxy: Callable[..., ProxyServer],
    tmp_path: Path,
) -> None:
    from tests.vision_server import VisionServer

    with VisionServer(answer="A coffee cup <on> a saucer & spoon.") as vision:
        server = start_proxy(
            prompt_preset="describe",
            describers=[{"name": "local", "base_url": vision.base_url, "model": "vlm"}],
        )
        page = playground(server)
        page.pick(write(tmp_path, "coffee.png", fresh_png(2601)))
        page.ask("What is on the saucer?")
        page.wait_done()
        page.wait(lambda: "image 1" in page.text("image-descriptions"))
        page.shot("described")
        shown = page.text("image-descriptions")
        assert shown == "image 1: described by local: A coffee cup <on> a saucer & spoon."
        assert "What is on the saucer?" in vision.requests[-1].prompt
