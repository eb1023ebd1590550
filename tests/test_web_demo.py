"""The browser page (examples/web) in headless Chromium: draw a stroke, read the prediction and the heatmap back from
the page and compare them with Python onnxruntime on the same input; and `onnxlrp web-demo` serving it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxlrp
from onnxlrp.compiler import compiled_metadata
from onnxlrp.web_demo import ORT_WEB, address, compiled_model_bytes, make_server, page_folder

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "examples" / "web"
MODELS = ROOT / "models"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1180,1240")
TOLERANCE = 1e-5


def _browser_missing() -> str:
    """Why the browser test cannot run here ('' when it can)."""
    if not (PAGE / ORT_WEB).is_file():
        return f"onnxruntime-web is not installed in {PAGE} (npm ci there; `make test` does it when npm exists)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: `make test` installs Debian's {package} with apt-get where it can"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return ""


def _reference(model_bytes: bytes, x: np.ndarray, target: int) -> dict:
    """Every output of the compiled model in Python onnxruntime (CPU)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {session.get_inputs()[0].name: x, "lrp_target": np.full(len(x), target, dtype=np.int64)}
    return dict(zip(names, session.run(None, feeds)))


def chromium_driver(profile: str):
    """Headless Chromium (Debian's, driven by its chromedriver) with the profile folder profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile."""
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    driver = chromium_driver(str(tmp_path_factory.mktemp("chromium-profile")))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def cnn_bytes() -> bytes:
    return compiled_model_bytes(onnx.load(str(MODELS / "digits_cnn.onnx")), "epsilon_plus")


@pytest.fixture(scope="module")
def served(cnn_bytes):
    """The page and the compiled digits CNN on a free localhost port."""
    server = make_server(page_folder(PAGE), cnn_bytes, port=0, name="digits_cnn.onnx")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield address(server)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page(browser, served):
    """The page loaded once (loading onnxruntime-web's wasm is the slow part) with the digits CNN."""
    browser.get(served + "?backend=wasm")
    _wait(browser, "document.body.dataset.state === 'ready'")
    return browser


def _wait(driver, condition: str, timeout: float = 60.0):
    """Poll a JavaScript expression until it is truthy; fail with the page's state and message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {condition};")
        if value:
            return value
        time.sleep(0.05)
    state = driver.execute_script("return [document.body.dataset.state, document.body.dataset.error || '', "
                                  "document.querySelector('#message').textContent];")
    raise AssertionError(f"timed out waiting for {condition}: page state {state}")


def _settled(driver, runs_before: int):
    """Wait for a finished explanation after runs_before and return the page's result."""
    _wait(driver, f"document.body.dataset.state === 'ready' && Number(document.body.dataset.runs) > {runs_before}")
    return driver.execute_script("return window.onnxlrpDemo.result();")


def _runs(driver) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.runs);"))


def _draw_seven(driver) -> None:
    """A fixed stroke on the pad with real pointer events: a 7 (top bar, then the diagonal)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    pad = driver.find_element(By.ID, "pad")
    actions = ActionChains(driver, duration=0)
    actions.move_to_element_with_offset(pad, -80, -95).click_and_hold()
    actions.move_by_offset(80, 0).move_by_offset(80, 0)        # the page joins successive points with lines
    actions.move_by_offset(-45, 95).move_by_offset(-45, 95)
    actions.release().perform()


def _compare(result: dict, reference: dict, meta: dict, spec_shape: tuple) -> None:
    """The page's numbers against Python onnxruntime's on the same input."""
    logits = reference[meta["logits"]].reshape(-1)
    np.testing.assert_allclose(result["logits"], logits, rtol=0, atol=TOLERANCE)
    assert result["predicted"] == int(np.argmax(logits))
    relevance = reference[meta["relevance"]["input"]]
    np.testing.assert_allclose(np.array(result["relevance"]).reshape(relevance.shape), relevance, rtol=0,
                               atol=TOLERANCE)
    heatmap = relevance.reshape(spec_shape).sum(axis=1 if len(spec_shape) == 4 else 0).reshape(-1)
    np.testing.assert_allclose(result["heatmap"], heatmap, rtol=0, atol=TOLERANCE)
    assert result["total"] == pytest.approx(float(reference[meta["total"]][0]), abs=TOLERANCE)
    assert result["stabilizer"] == pytest.approx(float(reference[meta["stabilizer"]][0]), abs=TOLERANCE)
    biases = sum(float(reference[name].sum()) for name in meta["bias"].values())
    assert result["biases"] == pytest.approx(biases, abs=TOLERANCE)
    rows = {row["name"]: row for row in result["biasTable"]}
    for node, name in meta["bias"].items():
        assert rows[node]["mean"] == pytest.approx(float(reference[name].sum()), abs=TOLERANCE)
    # the page's conservation: total = inputs + biases + stabilizer, with float32 outputs summed in float64
    assert abs(result["inputs"] + result["biases"] + result["stabilizer"] - result["total"]) <= 1e-5 * abs(
        result["total"])


def test_page_draws_explains_and_matches_python(page, cnn_bytes, tmp_path):
    browser = page
    meta = compiled_metadata(onnx.load_from_string(cnn_bytes))
    runs = _runs(browser)
    _draw_seven(browser)
    result = _settled(browser, runs)
    x = np.array(result["input"], dtype=np.float32).reshape(result["inputDims"])
    assert x.shape == (1, 1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0 and x.sum() > 5  # ink reached the input
    _compare(result, _reference(cnn_bytes, x, -1), meta, (1, 1, 8, 8))
    status = browser.find_element("id", "status").text
    expected = f"model digits_cnn.onnx ({len(cnn_bytes) / 1024:.0f} kB) · composite epsilon_plus"
    assert status.startswith(expected), status
    assert "onnxruntime-web 1.30.0 on wasm" in status
    browser.save_screenshot(str(tmp_path / "web-demo.png"))

    # explain another class: click its row; the page feeds lrp_target and redraws the heatmap
    second = int(np.argsort(result["logits"])[-2])
    runs = _runs(browser)
    browser.find_element("css selector", f"#classes li[data-class='{second}']").click()
    other = _settled(browser, runs)
    assert other["target"] == second and other["predicted"] == result["predicted"]
    _compare(other, _reference(cnn_bytes, x, second), meta, (1, 1, 8, 8))
    caption = browser.find_element("id", "heatmap-caption").text
    assert caption == f"relevance for class {second}"
    browser.save_screenshot(str(tmp_path / "web-demo-other-class.png"))
    print(f"screenshots in {tmp_path}")


def test_page_opens_another_compiled_model(page, tmp_path):
    """The compiled MLP (a flat 64-feature input, drawn as 8x8) opened with the file button; a model that is not
    compiled is refused with one line."""
    from selenium.webdriver.common.by import By
    mlp = onnxlrp.compile(str(MODELS / "digits_mlp.onnx"), "epsilon")
    path = tmp_path / "mlp_compiled.onnx"
    onnx.save(mlp, str(path))
    browser = page
    browser.find_element(By.ID, "clear").click()
    runs = _runs(browser)
    _draw_seven(browser)
    _settled(browser, runs)
    runs = _runs(browser)
    browser.find_element(By.ID, "model-file").send_keys(str(path))
    result = _settled(browser, runs)
    assert result["inputDims"] == [1, 64]
    x = np.array(result["input"], dtype=np.float32).reshape(1, 64)
    meta = compiled_metadata(mlp)
    _compare(result, _reference(mlp.SerializeToString(), x, -1), meta, (1, 8, 8))
    assert "digits_mlp" not in browser.find_element(By.ID, "status").text  # the file's name, not the original's
    assert "mlp_compiled.onnx" in browser.find_element(By.ID, "status").text

    browser.find_element(By.ID, "model-file").send_keys(str(MODELS / "digits_cnn.onnx"))
    _wait(browser, "document.body.dataset.state === 'error'")
    message = browser.find_element(By.ID, "message").text
    assert message.startswith("digits_cnn.onnx is not compiled by onnxlrp") and "\n" not in message


def test_web_demo_command_serves_page_and_compiled_model(tmp_path):
    """`onnxlrp web-demo MODEL --port 0` prints the address and serves the page and the compiled model."""
    if not (PAGE / ORT_WEB).is_file():
        pytest.skip(f"onnxruntime-web is not installed in {PAGE}")
    command = [sys.executable, "-m", "onnxlrp", "web-demo", str(MODELS / "digits_mlp.onnx"), "--port", "0",
               "--composite", "epsilon"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("onnxlrp web demo: http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[3]
        with urllib.request.urlopen(url + "model.onnx", timeout=30) as response:
            served = onnx.load_from_string(response.read())
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert b'src="app.mjs"' in response.read()
        with urllib.request.urlopen(url + "app.mjs", timeout=30) as response:
            assert response.headers["Content-Type"] == "text/javascript"
    finally:
        process.terminate()
        process.wait(timeout=30)
    meta = compiled_metadata(served)
    assert meta["composite"] == "epsilon"
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    got = _reference(served.SerializeToString(), x, -1)
    want = onnxlrp.Explainer(str(MODELS / "digits_mlp.onnx"), "epsilon").explain(x)
    np.testing.assert_allclose(got[meta["relevance"]["input"]], want.relevance["input"], rtol=1e-6, atol=1e-7)


def test_web_demo_command_errors(tmp_path):
    """A page folder without the page, and one without onnxruntime-web, are one line each with exit 2."""
    from click.testing import CliRunner
    from onnxlrp.cli import main
    result = CliRunner().invoke(main, ["web-demo", "--page-dir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: the web page is not in {tmp_path}") and result.stderr.count("\n") == 1
    shutil.copy(PAGE / "index.html", tmp_path / "index.html")
    result = CliRunner().invoke(main, ["web-demo", "--page-dir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2
    assert "onnxruntime-web is not installed beside the page" in result.stderr and result.stderr.count("\n") == 1
