"""Registry logic. Services take typed arguments, never a request or the whole settings."""
