"""HTTP only: the /v2 OCI endpoints over plain ASGI. No database or blob store access here."""
