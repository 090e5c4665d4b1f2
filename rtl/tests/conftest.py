"""Start the slowest netlist check in the background as soon as the tests are collected.

The Yosys pass over the `default` scale point takes several minutes on one core, while most
other tests use one core at a time: it runs in a child process beside them, and its test is
moved to the end of the session, where it waits for the result.
"""

import pytest

from rtl.tests import test_netlist


@pytest.hookimpl(trylast=True)      # after -k, -m and --deselect have dropped what they drop
def pytest_collection_modifyitems(session, config, items):
    slow = [it for it in items if it.originalname == "test_no_multiplier_cell"
            and it.callspec.params["point"] in test_netlist.BACKGROUND_POINTS]
    if not slow or config.option.collectonly:
        return
    for it in slow:
        items.remove(it)
        items.append(it)
        test_netlist.start_cell_check(it.callspec.params["point"])


def pytest_sessionfinish(session, exitstatus):
    test_netlist.stop_background()
