"""The query service's fixtures (``tests/query/conftest.py``), shared with the hostile-input tests here:
the app in-process on this test's slice of the real stack, a catalogue and a snapshot writer."""

import importlib
import sys
import types
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]


def _package(name: str, path: Path) -> None:
    # pytest's importlib mode imports test folders without __init__.py; make them importable as packages
    # (once; pytest may have done it already) so the query conftest's relative imports resolve.
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


_package("tests", _TESTS)
_package("tests.query", _TESTS / "query")
_query = importlib.import_module("tests.query.conftest")

catalogue = _query.catalogue
query_settings = _query.query_settings
start_query = _query.start_query
writer = _query.writer
