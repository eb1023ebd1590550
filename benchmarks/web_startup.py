"""Size and start-up of compiled models in a browser: onnxruntime-web (wasm) in headless Chromium, on the page of
examples/web, for the digits CNN and a ResNet-18-shaped model (benchmarks/models.py, random weights).

For each model and round, a fresh browser (new profile: nothing cached) opens the page served by onnxlrp's web-demo
server and reports, as measured by the page itself (performance.now()):
- first start: fetching the model + the first session, which includes starting onnxruntime-web's wasm runtime
  (compiling its 14 MB wasm file);
- session start: a second session for the same model in the same page (runtime already started): parsing, graph
  optimisation (constant folding of the derived weights W+, W-) and kernel preparation;
- one explanation: session.run on the drawn input (batch 1, wasm, the page's thread count), the median of --runs.
Printed as medians over the rounds, with the compiled file's size (and gzip-compressed, as a web server would send it).

    .venv/bin/python benchmarks/web_startup.py [--models digits_cnn resnet18] [--rounds 3] [--composite epsilon_plus]
"""
from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def compiled_bytes(name: str, composite: str, workdir: Path) -> bytes:
    """The compiled model's bytes: the shipped digits CNN, or a benchmark model exported with the legacy exporter."""
    import onnx

    from onnxlrp.web_demo import compiled_model_bytes
    if name == "digits_cnn":
        source = ROOT / "models" / "digits_cnn.onnx"
    else:
        import models
        from compare import export
        model, shape = models.build(name)
        source = export(model, shape, workdir / f"{name}.onnx")
    return compiled_model_bytes(onnx.load(str(source)), composite)


def one_round(page: Path, data: bytes, name: str, runs_timed: int) -> dict:
    """Fresh browser, page opened, model started twice, one stroke explained: the page's timings in ms."""
    from test_web_demo import _draw_seven, _runs, _settled, _wait, chromium_driver

    from onnxlrp.web_demo import address, make_server
    server = make_server(page, data, port=0, name=f"{name}.onnx")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium_driver(profile)
        try:
            driver.get(address(server) + "?backend=wasm")
            _wait(driver, "document.body.dataset.state === 'ready'", timeout=600)
            first = driver.execute_script("return window.onnxlrpDemo.timings();")
            driver.execute_script("window.onnxlrpDemo.load('model.onnx');")
            _wait(driver, "document.body.dataset.state === 'ready' && window.onnxlrpDemo.timings().fetchMs !== "
                          f"{first['fetchMs']}", timeout=600)
            second = driver.execute_script("return window.onnxlrpDemo.timings();")
            runs = _runs(driver)
            _draw_seven(driver)
            _settled(driver, runs)
            threads = driver.execute_script("return window.onnxlrpDemo.state.threads;")
            run = driver.execute_async_script("window.onnxlrpDemo.timeRuns(arguments[0]).then(arguments[1]);",
                                              runs_timed)
        finally:
            driver.quit()
            server.shutdown()
            server.server_close()
    return {"first": first["fetchMs"] + first["sessionMs"], "session": second["sessionMs"], "run": run,
            "threads": threads}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "resnet18"])
    parser.add_argument("--composite", default="epsilon_plus")
    parser.add_argument("--rounds", type=int, default=3, help="fresh browsers per model")
    parser.add_argument("--runs", type=int, default=10, help="timed explanations per browser")
    args = parser.parse_args(argv)
    from test_web_demo import _browser_missing

    from onnxlrp.web_demo import page_folder
    missing = _browser_missing()
    if missing:
        print(f"cannot measure: {missing}")
        return 2
    page = page_folder(ROOT / "examples" / "web")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            data = compiled_bytes(name, args.composite, Path(workdir))
            rounds = [one_round(page, data, name, args.runs) for _ in range(args.rounds)]
            med = {k: statistics.median(r[k] for r in rounds) for k in ("first", "session", "run")}
            rows.append((name, len(data), len(gzip.compress(data, 6)), med, rounds[0]["threads"]))
            print(f"[{name}] " + ", ".join(f"{k} {v:.0f} ms" for k, v in med.items()), flush=True)
    print(f"\ncomposite {args.composite}, onnxruntime-web wasm in headless Chromium, medians of {args.rounds} rounds")
    print("| model | compiled MiB | gzip MiB | first start ms (fetch + wasm runtime + session) | session start ms "
          "| one explanation ms | wasm threads |")
    print("|---|---|---|---|---|---|---|")
    for name, size, packed, med, threads in rows:
        print(f"| {name} | {size / 2**20:.2f} | {packed / 2**20:.2f} | {med['first']:.0f} | {med['session']:.0f} "
              f"| {med['run']:.1f} | {threads} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
