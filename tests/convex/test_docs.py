"""The examples in the convex backend's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["_data", "_eigen", "_model", "_driver"])
def test_docstring_examples(name):
    module = importlib.import_module(f"hessbatch.convex.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
