"""Outside programs some tests drive (Debian's chromium, promtool): found, or the test is skipped.

`.ci/run` installs them and sets RUNSYNC_REQUIRE_TOOLS=1, so in CI a missing program fails the
test instead of skipping it: a check that silently stopped running would pass forever.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(program: str) -> str:
    """The path of `program`, or skip (fail under RUNSYNC_REQUIRE_TOOLS=1) when it is missing."""
    path = shutil.which(program)
    if path is not None:
        return path
    message = f"{program} is not installed (Debian: see .ci/run)"
    if os.environ.get("RUNSYNC_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)
