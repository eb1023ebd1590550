"""CLI command: onnxlrp web-demo [MODEL] (the browser page of examples/web served on localhost)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from .cli_options import command, composite_option, output_option, parse_sets, set_option


@command("web-demo", short_help="Serve the browser page on localhost (onnxruntime-web).")
@click.argument("model", type=click.Path(), required=False)
@composite_option
@set_option
@output_option
@click.option("--port", "-p", default=8000, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--page-dir", default=None, type=click.Path(file_okay=False),
              help="The page's folder [default: examples/web of the repository onnxlrp runs from].")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
def web_demo_cmd(model: Optional[str], composite, sets, output_name, port, page_dir, open_browser) -> None:
    """Serve the browser demo for MODEL (compiled on the fly if needed; default: the shipped digits CNN)."""
    from .demo import shipped_model_dir
    from .graph import load_model
    from .web_demo import address, compiled_model_bytes, make_server, page_folder
    page = page_folder(page_dir)
    path = model or str(shipped_model_dir() / "digits_cnn.onnx")
    data = compiled_model_bytes(load_model(path), composite, parse_sets(sets), output_name)
    server = make_server(page, data, port=port, name=Path(path).name)
    url = address(server)
    click.echo(f"onnxlrp web demo: {url} (model {path}, {len(data) / 1024:.0f} kB compiled; Ctrl+C stops)")
    if open_browser:
        import webbrowser
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()


COMMANDS = (web_demo_cmd,)
