"""The `hosts` fixture: two simulated hosts (network namespaces, own hostnames), torn down
after the test; the test is skipped where they cannot be made (not root, no `ip`)."""
import pytest

from tests.multihost import netns


@pytest.fixture
def hosts():
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.simulated_hosts(2) as pair:
        yield pair
