"""Every flag of every command a user types has help, and the help states each default once:
a default that a profile or another flag decides is said in the help's own words, never
contradicted by argparse's "(default: None)"."""
from __future__ import annotations

import argparse
import importlib
import re

import pytest

from ofaserve.core.stage_cli import HelpFormatter

PARSERS = [("ofaserve.compress.cli", "build_parser"), ("ofaserve.export.cli", "build_parser"),
           ("ofaserve.serve.cli", "repo_parser"), ("ofaserve.serve.cli", "serve_parser"),
           ("ofaserve.serve.cli", "classify_parser"), ("ofaserve.benchmarks.run", "build_parser"),
           ("ofaserve.benchmarks.reliability.cli", "build_parser"), ("ofaserve.demo", "build_parser")]


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("module, builder", PARSERS, ids=[f"{m.rsplit('.', 2)[-2]}.{b}" for m, b in PARSERS])
def test_every_flag_has_help_that_states_its_default_once(module, builder):
    parser = getattr(importlib.import_module(module), builder)()
    for action in _flags(parser):
        assert action.help and action.help.strip(), f"{action.option_strings[0]} has no help"
    text = re.sub(r"\s+", " ", parser.format_help())
    assert "(default: None)" not in text and "(default: False)" not in text
    formatter = parser._get_formatter()
    for action in _flags(parser):  # "[default: X] (default: X)": argparse's suffix after help that says it
        own = action.help % {**vars(action), "prog": parser.prog} if "%" in action.help else action.help
        added = formatter._expand_help(action) != own
        assert not (added and re.search(r"[\[(]default\b", own)), (action.option_strings[0], own)


def test_the_formatter_adds_a_default_only_where_it_tells_something():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--size", type=int, default=16, help="rows per batch")
    p.add_argument("--name", default=None, help="a name [default: the model's own]")
    p.add_argument("--flag", action="store_true", help="turn it on")
    p.add_argument("--rate", type=float, default=0.5, help="a rate (default 0.5 in the full profile)")
    p.add_argument("--no_skip", dest="skip", action="store_false", help="do not skip it")
    p.add_argument("--mode", default="safe", help="how to write (by default only into a new folder)")
    text = re.sub(r"\s+", " ", p.format_help())
    assert "do not skip it (default" not in text  # a switch's stored True is not what a user types
    assert "(by default only into a new folder) (default: safe)" in text
    assert "rows per batch (default: 16)" in text
    assert "[default: the model's own] (default" not in text and "turn it on (default" not in text
    assert "(default 0.5 in the full profile) (default" not in text
