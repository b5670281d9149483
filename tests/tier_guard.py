"""The guard every test tier runs under, as a pytest plugin module: a run that skipped a
whole file, or passed no test at all, has proven nothing, so it fails. tests/conftest.py
uses it for the tiers in .venv and .venv-sa; tests/frameworks_tier/conftest.py for the
frameworks tier, whose environment (.venv-frameworks) cannot import tests/conftest.py.
Standard library and pytest only."""

from __future__ import annotations

import sys

import pytest

_skipped_files: list[str] = []


def pytest_collectreport(report) -> None:
    if report.skipped and report.nodeid.endswith(".py"):
        _skipped_files.append(report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    """A run that skipped a whole file, or passed no test at all, has proven nothing: it
    fails, so a broken environment can never look like a green suite."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter else 0
    if _skipped_files:
        print(f"\nFAILED: whole files were skipped: {', '.join(_skipped_files)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif exitstatus == 0 and passed == 0 and not session.config.option.collectonly:
        print("\nFAILED: no test passed in this run", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
