"""How quickly the page of `rnn_mnist.py serve` answers: /api/read, and the page in a browser.

    python bench/serve_latency.py --model Visualize/seed1/model.keras --data ../shared/data/mnist.npz

Serves the model on a free port of 127.0.0.1 (from this process, so the server ends
with it), then
- sends `--requests` test digits, one at a time, as 280x280 PNG pictures drawn dark on
  light (what the page sends) to POST /api/read, and times each answer;
- with `--strokes N` and Debian's chromium and chromium-driver at hand, draws N digits
  on the page in headless Chromium and reads the page's own timings, from the end of a
  stroke to the answer drawn.
Prints one JSON object: the median and 95th percentile of each, in milliseconds.
"""

import argparse
import http.client
import io
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rnn_mnist  # noqa: E402  (the repo root is put on the path above)
from plumbing import graphs, lazy_tensorflow, server, using  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(rnn_mnist.__file__), "tests"))


def drawn_pictures(data, count):
    """The first `count` test digits as the page sends them: PNG, 280x280, dark on light."""
    from PIL import Image  # tests/requirements.txt
    np = rnn_mnist.np
    with np.load(data) as npz:
        digits = npz["x_test"][:count]
    pictures = []
    for digit in digits:
        buffer = io.BytesIO()
        Image.fromarray(255 - digit).resize((280, 280), Image.BILINEAR).save(buffer, "PNG")
        pictures.append(buffer.getvalue())
    return pictures


def api_latencies(address, pictures):
    connection = http.client.HTTPConnection(address, timeout=30)  # one kept-alive, as the page's
    seconds = []
    for body in pictures:
        started = time.perf_counter()
        connection.request("POST", "/api/read", body=body)
        response = connection.getresponse()
        response.read()
        seconds.append(time.perf_counter() - started)
        assert response.status == 200, response.status
    connection.close()
    return seconds


def page_latencies(url, strokes):
    from test_page import SEVEN, draw, wait_for_answer  # the browser test's own stroke
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    import shutil
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1280,1090"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        for stroke in range(strokes):
            driver.execute_script("document.getElementById('clear').click()")
            draw(driver, SEVEN)
            wait_for_answer(driver, stroke + 1)
        return [ms / 1000 for ms in driver.execute_script("return window.rnnMnist.timings")]
    finally:
        driver.quit()


def summary(seconds):
    np = rnn_mnist.np
    ms = np.array(seconds) * 1000
    return {"count": len(ms), "median_ms": round(float(np.median(ms)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "max_ms": round(float(ms.max()), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained model.keras")
    parser.add_argument("--data", required=True, help="mnist.npz, for the test digits")
    parser.add_argument("--requests", type=int, default=200, help="requests to /api/read")
    parser.add_argument("--strokes", type=int, default=0, help="digits drawn in the browser")
    args = parser.parse_args()
    lazy_tensorflow.quiet_tensorflow(verbose=False)
    graphs.configure_for_predicting()
    model, path = using.load_trained_model(args.model)
    page = server.page_server(server.Reader(model, path), "127.0.0.1", 0)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{page.server_address[1]}"
    try:
        results = {"model": path, "api_read": summary(api_latencies(address, drawn_pictures(
            args.data, args.requests)))}
        if args.strokes:
            results["page_stroke_to_answer"] = summary(page_latencies(f"http://{address}/", args.strokes))
    finally:
        page.shutdown()
        page.server_close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
