"""Hypothesis profiles: the full one in CI (CI=true), a small one for quick local runs; figures a test reports; how
the tests are shared between processes (`pytest -n 2`, as `make test` runs them).

HYPOTHESIS_PROFILE=full or =small chooses one explicitly. Property tests state how many examples
they want in the full profile with `examples(n)`; the small profile runs a tenth of that.
"""

from __future__ import annotations

from typing import Any, Protocol

import pytest
from hypothesis import settings

from tests import PROFILE

settings.register_profile("full", deadline=None, print_blob=True)
settings.register_profile("small", deadline=None, max_examples=20)
settings.load_profile(PROFILE)


# Integration tests that start a broker and a server of their own, and so may run beside the others.
ON_THEIR_OWN_STACK = ("tests/integration/test_fault_run.py::",)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's: absent with `-p no:xdist`
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `-n` (and no `--dist` other than its default): the integration tests one after another in one process
    (they share one broker and one server, which each process would otherwise start its own of); the fault run (its
    own) and each unit test wherever a process is free: in the other one.

    (pytest-xdist's `--dist loadgroup` would do it with a mark, but with pytest 9 its groups are ignored: it
    renames a test's `_nodeid`, which pytest no longer reads.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class IntegrationTestsTogether(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no type hints
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/integration/") and not nodeid.startswith(ON_THEIR_OWN_STACK):
                return "tests/integration"
            return nodeid

    return IntegrationTestsTogether(config, log)


class Figures(Protocol):
    def __call__(self, *lines: str) -> None: ...


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """Lines of figures (a fault or fuzz run's) for the run's summary, which `make test` prints.

    Printing would not do: `make test` runs its tests in two processes, whose output is not the terminal's."""

    def report(*lines: str) -> None:
        request.node.user_properties.extend(("figures", line) for line in lines)

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and report.when == "call"
        for name, value in report.user_properties
        if name == "figures"
    ]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(str(line))
