"""The online-store contract on the in-memory twin."""

import pytest

from liveml.online.memory import InMemoryOnlineStore
from tests.online_contract import CHECKS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(check):
    check(InMemoryOnlineStore())
