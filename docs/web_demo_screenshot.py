"""Redraw docs/web-demo.png: the web page in headless Chromium with a hand-drawn-looking 2 on the digits CNN.

    .venv/bin/python docs/web_demo_screenshot.py [OUT.png]
"""
from __future__ import annotations

import math
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def two(steps: int = 40) -> list:
    """Points of a 2 on the 280 px pad, relative to its centre: an arc over the top, a diagonal, a base line."""
    points = [(70 * math.cos(a), -45 + 55 * math.sin(a))
              for a in (math.pi * (1.1 + 1.2 * i / steps) for i in range(steps + 1))]
    end = points[-1]
    points += [(end[0] + (-75 - end[0]) * t, end[1] + (95 - end[1]) * t) for t in (i / 10 for i in range(1, 11))]
    points += [(-75 + 150 * t, 95) for t in (i / 8 for i in range(1, 9))]
    return points


def main(out: str) -> None:
    import onnx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from test_web_demo import _runs, _settled, _wait, chromium_driver

    from onnxlrp.web_demo import address, compiled_model_bytes, make_server, page_folder
    data = compiled_model_bytes(onnx.load(str(ROOT / "models" / "digits_cnn.onnx")), "epsilon_plus")
    server = make_server(page_folder(ROOT / "examples" / "web"), data, port=0, name="digits_cnn.onnx")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium_driver(profile)
        try:
            driver.get(address(server) + "?backend=wasm")
            _wait(driver, "document.body.dataset.state === 'ready'")
            runs = _runs(driver)
            points = two()
            actions = ActionChains(driver, duration=0)
            actions.move_to_element_with_offset(driver.find_element(By.ID, "pad"), *map(round, points[0]))
            actions.click_and_hold()
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                actions.move_by_offset(round(x1) - round(x0), round(y1) - round(y0))
            actions.release().perform()
            result = _settled(driver, runs)
            metrics = {"width": 1180, "height": 600, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the page's own height, then
            metrics["height"] = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # a viewport just that tall
            driver.save_screenshot(out)
            print(f"wrote {out}: predicted {result['predicted']}")
        finally:
            driver.quit()
            server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "web-demo.png"))
