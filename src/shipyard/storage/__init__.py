"""Content-addressed blob storage: one protocol, several drivers, one shared driver test suite."""

from shipyard.storage.base import BlobStore, BlobWriter, UploadMissing

__all__ = ["BlobStore", "BlobWriter", "UploadMissing"]
