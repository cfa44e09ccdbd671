"""The Xen lab suite runs only inside the lab's dom0 (tests/xen/run.sh, via
dom0-init, sets COLO_LAB_MODE); anywhere else every test is skipped.  The
normal `make test` run does not collect tests/xen at all."""

from __future__ import annotations

import pytest
from xenlab_util import MODE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MODE:
        skip = pytest.mark.skip(reason="Xen lab only: run `make xen-test`")
        for item in items:
            if "tests/xen/" in str(item.fspath):
                item.add_marker(skip)
