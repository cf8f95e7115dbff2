"""The conftest's skip guard: a skip fails the run unless the test is marked `cannot_run_here(reason=...)`."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def _run(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    cannot_run_here(reason): may skip here\n")
    pytester.makepyfile(test_it=body)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider")


def test_an_unmarked_skip_fails_the_run(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "import pytest\ndef test_a():\n    pytest.skip('no data')\n")
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*skipped without @pytest.mark.cannot_run_here*no data*"])


def test_a_marked_skip_is_allowed(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "import pytest\n@pytest.mark.cannot_run_here(reason='needs a GPU')\n"
                            "def test_a():\n    pytest.skip('no GPU')\n")
    result.assert_outcomes(skipped=1)
    assert result.ret == 0


def test_a_module_level_skip_fails_the_run(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "import pytest\npytest.importorskip('no_such_module_here')\ndef test_a():\n    pass\n")
    assert result.ret != 0
