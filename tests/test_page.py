"""The page in a real browser: headless Chromium draws digits with pointer events and sees
the answer, the reading over the rows and the state of the LSTM appear.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); outside CI the
test is skipped, with the reason, where they are missing.
"""
import os
import shutil

import pytest

from test_serve import serve_in_thread

pytestmark = pytest.mark.full  # the full tier: python -m pytest tests --full

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT = os.environ.get("RNN_MNIST_SCREENSHOT")  # also save the screenshot there (README)
MODEL = os.environ.get("RNN_MNIST_PAGE_MODEL")  # serve this model.keras (for the screenshot)


@pytest.fixture(scope="module")
def browser():
    missing = [name for name, path in [("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)] if not path]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"no browser for the page test: {', '.join(missing)} missing " \
                 "(apt-get install chromium chromium-driver; pip install -r tests/requirements.txt)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--window-size=1280,1090"]:
        options.add_argument(flag)  # and nothing that reaches beyond this machine
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_url(request):
    """The page for a model of real digits where the data is at hand, else the tiny one."""
    try:
        model = MODEL or request.getfixturevalue("real_model")
    except pytest.skip.Exception:
        model = request.getfixturevalue("trained")["model"]
    server, address = serve_in_thread(model)
    yield f"http://{address}/"
    server.shutdown()
    server.server_close()


SEVEN = [(35, 0)] * 4 + [(-10, 25)] * 7  # a bar to the right, then a stroke down and left
ONE = [(0, 25)] * 8  # a stroke straight down


def draw(driver, moves, start=(-70, -90)):
    """One stroke on the pad: pointer down, moves, pointer up (real pointer events)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    strokes = ActionChains(driver, duration=10)
    strokes.move_to_element_with_offset(driver.find_element(By.ID, "pad"), *start).click_and_hold()
    for dx, dy in moves:
        strokes.move_by_offset(dx, dy)
    strokes.release().perform()


def wait_for_answer(driver, answers):
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return window.rnnMnist.timings.length >= arguments[0]", answers))


PAINTED = """
const canvas = arguments[0], g = canvas.getContext('2d');
const pixels = g.getImageData(0, 0, canvas.width, canvas.height).data;
const colours = new Set();
for (let i = 0; i < pixels.length; i += 4) colours.add(pixels.slice(i, i + 4).join());
return colours.size;
"""


def test_drawing_a_digit_shows_the_answer_the_reading_and_the_state(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By
    browser.get(page_url)
    placeholders = browser.find_elements(By.CSS_SELECTOR, ".placeholder")
    assert len(placeholders) == 3  # before any drawing, each panel says what will show there
    assert all(p.is_displayed() and "Draw a digit" in p.text for p in placeholders)
    draw(browser, SEVEN)
    wait_for_answer(browser, 1)
    assert not any(p.is_displayed() for p in placeholders)

    answer = browser.find_element(By.ID, "answer").text
    assert answer.isdigit()
    top3 = browser.find_elements(By.CSS_SELECTOR, "#top3 li")
    assert len(top3) == 3 and top3[0].text.startswith(answer)
    assert browser.find_element(By.ID, "status").text == ""
    assert "row" in browser.find_element(By.ID, "story").text
    for name in ("seen", "readout", "bars"):  # the picture the model saw, the readout and its bars
        assert browser.execute_script(PAINTED, browser.find_element(By.ID, name)) > 10, name
    states = browser.find_elements(By.CSS_SELECTOR, "#state canvas")
    assert [s.get_attribute("data-name") for s in states] == [
        "input gate", "forget gate", "output gate", "cell state"]
    assert all(browser.execute_script(PAINTED, s) > 20 for s in states)

    browser.execute_script("""const row = document.getElementById('row');
        row.value = 5; row.dispatchEvent(new Event('input'));""")  # scrub to row 5
    assert browser.find_element(By.ID, "row-label").text == "5"
    browser.save_screenshot(str(tmp_path / "page.png"))
    if SCREENSHOT:  # the README's picture: the whole reading, in few colours so the file is small
        from PIL import Image
        browser.execute_script("""const row = document.getElementById('row');
            row.value = 27; row.dispatchEvent(new Event('input'));""")
        browser.save_screenshot(str(tmp_path / "whole.png"))
        whole = Image.open(tmp_path / "whole.png").convert("RGB")
        whole.quantize(colors=256).save(SCREENSHOT, optimize=True)

    first = browser.execute_script("return window.rnnMnist.page.reading.state['cell state']")
    browser.find_element(By.ID, "clear").click()
    assert browser.find_element(By.ID, "answer").text == "–"
    assert all(p.is_displayed() for p in placeholders)
    draw(browser, ONE, start=(0, -100))
    wait_for_answer(browser, 2)
    second = browser.execute_script("return window.rnnMnist.page.reading.state['cell state']")
    assert first != second  # another digit, another state
    timings = browser.execute_script("return window.rnnMnist.timings")
    print(f"from the end of a stroke to the answer drawn: {', '.join(f'{t:.0f} ms' for t in timings)}")


def test_a_picture_that_is_not_a_digit_is_answered_on_the_page(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(page_url)
    (tmp_path / "notes.png").write_bytes(b"not a picture at all")
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.png"))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").text == \
        "the picture is not a PNG, JPEG, BMP or GIF image; give a picture of a digit"
    assert browser.find_element(By.ID, "answer").text == "–"


UNREAD_BLUE = """
const g = arguments[0].getContext('2d'), data = g.getImageData(0, 0, arguments[0].width, arguments[0].height).data;
let blue = 0;
for (let i = 0; i < data.length; i += 4) if (data[i] === 28 && data[i + 1] === 34 && data[i + 2] === 72) blue++;
return blue;
"""


def test_a_permuted_model_is_shown_step_by_step_its_image_filling_in(browser, trained_permuted):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    server, address = serve_in_thread(trained_permuted["model"])
    try:
        browser.get(f"http://{address}/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "reads").is_displayed())
        assert "permuted, 7 pixels a step (112 steps)" in browser.find_element(By.ID, "reads").text
        assert "step by step" in browser.find_element(By.CSS_SELECTOR, "#reading-panel h2").text
        draw(browser, SEVEN)
        wait_for_answer(browser, 1)
        assert "step" in browser.find_element(By.ID, "story").text
        seen, unread = browser.find_element(By.ID, "seen"), []
        for row, label in ((5, "24 of 112"), (27, "112 of 112")):  # every 4th of 112 steps shown
            browser.execute_script("""const row = document.getElementById('row');
                row.value = arguments[0]; row.dispatchEvent(new Event('input'));""", row)
            assert browser.find_element(By.ID, "row-label").text == label
            unread.append(browser.execute_script(UNREAD_BLUE, seen))
        # after 24 of 112 steps most blank pixels are still unread, scattered; at the end none
        assert unread[0] > 0.5 * 168 * 168 and unread[1] == 0
    finally:
        server.shutdown()
        server.server_close()
