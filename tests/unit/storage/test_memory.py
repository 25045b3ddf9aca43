from pathlib import Path

from shipyard.storage.base import BlobStore
from shipyard.storage.memory import MemoryBlobStore
from shipyard.storage.suite import BlobStoreSuite


class TestMemoryBlobStore(BlobStoreSuite):
    def make_store(self, scratch: Path) -> BlobStore:
        return MemoryBlobStore()
