"""The outbox's readers: events as CloudEvents, webhook subscriptions, signed deliveries and their
dispatcher."""
