"""Authentication primitives: scopes, signing keys, signed tokens and secrets. No HTTP, no SQL."""
