"""The suite passes when started as a background job (issue 32, item 16).

A non-interactive shell starts ``pytest &`` with SIGINT ignored, and an ignored signal stays ignored across
exec: the tests that press Ctrl-C must give their child the default handler (``conftest.popen_interruptible``)."""

from __future__ import annotations

import signal
import subprocess
import sys

CTRL_C_TESTS = ["tests/test_llm_plugin.py::test_ctrl_c_keeps_the_committed_steps_and_says_how_to_resume",
                "tests/test_models_pull.py::test_interrupted_pull_leaves_nothing"]


def test_the_ctrl_c_tests_pass_with_sigint_ignored_as_in_a_background_job():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child pytest starts as `bash -c 'pytest &'` starts it
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CTRL_C_TESTS],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    finally:
        signal.signal(signal.SIGINT, old)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"2 passed" in out
