"""The reference store runs the conformance suite too, so the suite itself is checked."""

from msgbus_core.memory import MemoryStore
from msgbus_core.testing import StoreConformance


class TestMemoryStoreConformance(StoreConformance):
    factory = MemoryStore
    persistent = False
    hypothesis_examples = 20
    entry_point = "memory"
    limits_stored_integers = False
