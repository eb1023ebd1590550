"""The README says what the program does: its signatures, every command-line option, links inside the repository."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import onnxlrp
from onnxlrp.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _documented_signature(call: str) -> list:
    """[(name, default source or None, keyword-only)] of a signature written as `call(...)` in the README."""
    text = " ".join(README.split())
    start = text.index(f"`{call}(") + len(call) + 2
    inner = text[start:text.index(")`", start)]
    args = ast.parse(f"def f({inner}): pass").body[0].args
    positional = [(a.arg, d, False) for a, d in zip(args.args, [None] * (len(args.args) - len(args.defaults))
                                                     + list(args.defaults))]
    keyword = [(a.arg, d, True) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return [(name, None if d is None else ast.literal_eval(d), kw) for name, d, kw in positional + keyword]


def _actual_signature(fn) -> list:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return [(p.name, None if p.default is inspect.Parameter.empty else p.default,
             p.kind is inspect.Parameter.KEYWORD_ONLY) for p in params]


def test_signatures_match_the_code():
    """The Explainer signature lacked node_relevance and session_options."""
    assert _documented_signature("onnxlrp.Explainer") == _actual_signature(onnxlrp.Explainer.__init__)
    assert _documented_signature("onnxlrp.compile") == _actual_signature(onnxlrp.compile)


def test_every_cli_option_is_in_the_synopsis():
    block = README.split("## Command line", 1)[1].split("```", 2)[1]
    synopsis, current = {}, None
    for line in block.splitlines():
        match = re.match(r"onnxlrp ([\w-]+)", line)
        current = match.group(1) if match else current
        if current:
            synopsis[current] = synopsis.get(current, "") + " " + line.split("#")[0]
    assert set(synopsis) == set(main.commands)
    for name, cmd in main.commands.items():
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert any(re.search(rf"(?<![\w-]){opt}(?![\w-])", synopsis[name]) for opt in param.opts), \
                    f"onnxlrp {name} {param.opts[0]} is not in the README's synopsis"


def test_links_stay_in_the_repository():
    """The conventions were linked at ../shared/design/, outside the repository."""
    links = re.findall(r"\]\(([^)#]+)", README)
    assert "docs/lrp-conventions.md" in links
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).resolve().is_relative_to(ROOT) and (ROOT / link).exists(), link
    assert "shared/design" not in README
