"""SQL metadata: typed models, engine set-up, queries and Alembic migrations."""
