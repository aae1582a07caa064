"""Help that teaches: every command and subcommand has a plain description with examples, every
option a help string, and no documentation markup leaks into the terminal."""

from __future__ import annotations

import argparse
import re

import pytest

from klear.cli import build_parser

MARKUP = re.compile(r":(func|class|mod|meth|data|attr):|``")


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


COMMANDS = [(" ".join(path), p) for path, p in _walk(build_parser()) if path]


@pytest.mark.parametrize("name, parser", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_help_has_examples_option_help_and_no_markup(name, parser):
    text = parser.format_help()
    leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    if leaf:
        assert "Examples:" in text and f"klear {name}" in text.split("Examples:", 1)[1], (
            f"klear {name}: no examples"
        )
    assert not MARKUP.search(text), f"klear {name}: markup {MARKUP.search(text).group(0)!r} in --help"
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction | argparse._HelpAction) and not a.help
    ]
    assert not missing, f"klear {name}: options without help: {missing}"
