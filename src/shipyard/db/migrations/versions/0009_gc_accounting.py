"""online GC review queues and storage accounting

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 23:20:00.000000

Storage counters are kept by triggers on repository_blobs, so that every path that links or unlinks a
blob (upload, mount, blob DELETE, repository delete, GC) keeps them exact in its own transaction,
including the hand-written single-statement link of the PostgreSQL hot path. On PostgreSQL the blob
row is updated first: concurrent link changes of one digest take turns on it, so the counts never
drift, and every trigger locks in the same order (blob, then repository, then namespace row).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_NAMESPACE = (
    "(SELECT CASE WHEN instr(name, '/') > 0 THEN substr(name, 1, instr(name, '/') - 1) ELSE name END "
    "FROM repositories WHERE id = {row}.repository_id)"
)

_SQLITE_TRIGGERS = [
    f"""
CREATE TRIGGER shipyard_link_added AFTER INSERT ON repository_blobs BEGIN
    UPDATE blobs SET links = links + 1 WHERE digest = NEW.digest;
    UPDATE repositories SET
        stored_bytes = stored_bytes + (SELECT size FROM blobs WHERE digest = NEW.digest),
        stored_blobs = stored_blobs + 1
    WHERE id = NEW.repository_id;
    INSERT INTO namespace_blobs (namespace, digest, links)
        SELECT {_SQLITE_NAMESPACE.format(row="NEW")}, NEW.digest, 0 WHERE true
        ON CONFLICT (namespace, digest) DO NOTHING;
    UPDATE namespace_blobs SET links = links + 1
        WHERE namespace = {_SQLITE_NAMESPACE.format(row="NEW")} AND digest = NEW.digest;
    UPDATE blobs SET namespaces = namespaces + 1
        WHERE digest = NEW.digest AND (
            SELECT links FROM namespace_blobs
            WHERE namespace = {_SQLITE_NAMESPACE.format(row="NEW")} AND digest = NEW.digest
        ) = 1;
END
""",
    f"""
CREATE TRIGGER shipyard_link_removed AFTER DELETE ON repository_blobs BEGIN
    UPDATE blobs SET links = links - 1 WHERE digest = OLD.digest;
    UPDATE repositories SET
        stored_bytes = stored_bytes - (SELECT size FROM blobs WHERE digest = OLD.digest),
        stored_blobs = stored_blobs - 1
    WHERE id = OLD.repository_id;
    UPDATE namespace_blobs SET links = links - 1
        WHERE namespace = {_SQLITE_NAMESPACE.format(row="OLD")} AND digest = OLD.digest;
    UPDATE blobs SET namespaces = namespaces - 1
        WHERE digest = OLD.digest AND EXISTS (
            SELECT 1 FROM namespace_blobs
            WHERE namespace = {_SQLITE_NAMESPACE.format(row="OLD")} AND digest = OLD.digest AND links = 0
        );
    DELETE FROM namespace_blobs
        WHERE namespace = {_SQLITE_NAMESPACE.format(row="OLD")} AND digest = OLD.digest AND links = 0;
END
""",
]

_POSTGRES_TRIGGERS = [
    """
CREATE FUNCTION shipyard_link_added() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    blob_size bigint;
    ns text;
    ns_links integer;
BEGIN
    UPDATE blobs SET links = links + 1 WHERE digest = NEW.digest RETURNING size INTO blob_size;
    UPDATE repositories SET stored_bytes = stored_bytes + blob_size, stored_blobs = stored_blobs + 1
        WHERE id = NEW.repository_id RETURNING split_part(name, '/', 1) INTO ns;
    INSERT INTO namespace_blobs (namespace, digest, links) VALUES (ns, NEW.digest, 1)
        ON CONFLICT (namespace, digest) DO UPDATE SET links = namespace_blobs.links + 1
        RETURNING links INTO ns_links;
    IF ns_links = 1 THEN
        UPDATE blobs SET namespaces = namespaces + 1 WHERE digest = NEW.digest;
    END IF;
    RETURN NULL;
END
$$
""",
    """
CREATE FUNCTION shipyard_link_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    blob_size bigint;
    ns text;
    ns_links integer;
BEGIN
    UPDATE blobs SET links = links - 1 WHERE digest = OLD.digest RETURNING size INTO blob_size;
    UPDATE repositories SET stored_bytes = stored_bytes - blob_size, stored_blobs = stored_blobs - 1
        WHERE id = OLD.repository_id RETURNING split_part(name, '/', 1) INTO ns;
    UPDATE namespace_blobs SET links = links - 1 WHERE namespace = ns AND digest = OLD.digest
        RETURNING links INTO ns_links;
    IF ns_links = 0 THEN
        DELETE FROM namespace_blobs WHERE namespace = ns AND digest = OLD.digest;
        UPDATE blobs SET namespaces = namespaces - 1 WHERE digest = OLD.digest;
    END IF;
    RETURN NULL;
END
$$
""",
    "CREATE TRIGGER shipyard_link_added AFTER INSERT ON repository_blobs "
    "FOR EACH ROW EXECUTE FUNCTION shipyard_link_added()",
    "CREATE TRIGGER shipyard_link_removed AFTER DELETE ON repository_blobs "
    "FOR EACH ROW EXECUTE FUNCTION shipyard_link_removed()",
]


def _bytewise(length: int) -> sa.String:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("repositories", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stored_bytes", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("stored_blobs", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("links", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("namespaces", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.create_index("ix_manifests_config", ["repository_id", "config_digest"], unique=False)
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=160), nullable=True))
        batch_op.create_index(batch_op.f("ix_upload_sessions_digest"), ["digest"], unique=False)
    with op.batch_alter_table("repository_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("untagged_retention_days", sa.Integer(), nullable=True))
    op.create_table(
        "namespace_blobs",
        sa.Column("namespace", _bytewise(255), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("links", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "digest", name=op.f("pk_namespace_blobs")),
    )
    op.create_index(op.f("ix_namespace_blobs_digest"), "namespace_blobs", ["digest"], unique=False)
    op.create_table(
        "gc_blob_reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("review_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("namespace", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gc_blob_reviews")),
    )
    op.create_index(op.f("ix_gc_blob_reviews_digest"), "gc_blob_reviews", ["digest"], unique=False)
    op.create_index(
        op.f("ix_gc_blob_reviews_review_after"), "gc_blob_reviews", ["review_after"], unique=False
    )
    op.create_table(
        "gc_link_reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("review_after", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gc_link_reviews")),
    )
    op.create_index("ix_gc_link_reviews_link", "gc_link_reviews", ["repository_id", "digest"], unique=False)
    op.create_index(
        op.f("ix_gc_link_reviews_review_after"), "gc_link_reviews", ["review_after"], unique=False
    )
    op.create_table(
        "gc_manifest_reviews",
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("manifest_id", name=op.f("pk_gc_manifest_reviews")),
    )
    op.create_index(
        op.f("ix_gc_manifest_reviews_repository_id"), "gc_manifest_reviews", ["repository_id"], unique=False
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    namespace = (
        "split_part(r.name, '/', 1)"
        if postgres
        else "CASE WHEN instr(r.name, '/') > 0 THEN substr(r.name, 1, instr(r.name, '/') - 1) ELSE r.name END"
    )
    # the counters of what exists already, then the triggers keep them
    op.execute(
        "INSERT INTO namespace_blobs (namespace, digest, links) "
        f"SELECT {namespace}, rb.digest, count(*) FROM repository_blobs rb "
        f"JOIN repositories r ON r.id = rb.repository_id GROUP BY {namespace}, rb.digest"
    )
    op.execute(
        "UPDATE blobs SET "
        "links = (SELECT count(*) FROM repository_blobs rb WHERE rb.digest = blobs.digest), "
        "namespaces = (SELECT count(*) FROM namespace_blobs nb WHERE nb.digest = blobs.digest)"
    )
    op.execute(
        "UPDATE repositories SET "
        "stored_bytes = (SELECT coalesce(sum(b.size), 0) FROM repository_blobs rb "
        "JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = repositories.id), "
        "stored_blobs = (SELECT count(*) FROM repository_blobs rb WHERE rb.repository_id = repositories.id)"
    )
    # everything that may be garbage today gets one review: unlinked blobs and every link
    op.execute(
        "INSERT INTO gc_blob_reviews (digest, review_after) "
        "SELECT digest, created_at FROM blobs WHERE links = 0"
    )
    op.execute(
        "INSERT INTO gc_link_reviews (repository_id, digest, review_after) "
        "SELECT repository_id, digest, created_at FROM repository_blobs"
    )
    for statement in _POSTGRES_TRIGGERS if postgres else _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER shipyard_link_added ON repository_blobs")
        op.execute("DROP TRIGGER shipyard_link_removed ON repository_blobs")
        op.execute("DROP FUNCTION shipyard_link_added()")
        op.execute("DROP FUNCTION shipyard_link_removed()")
    else:
        op.execute("DROP TRIGGER shipyard_link_added")
        op.execute("DROP TRIGGER shipyard_link_removed")
    op.drop_index(op.f("ix_gc_manifest_reviews_repository_id"), table_name="gc_manifest_reviews")
    op.drop_table("gc_manifest_reviews")
    op.drop_index(op.f("ix_gc_link_reviews_review_after"), table_name="gc_link_reviews")
    op.drop_index("ix_gc_link_reviews_link", table_name="gc_link_reviews")
    op.drop_table("gc_link_reviews")
    op.drop_index(op.f("ix_gc_blob_reviews_review_after"), table_name="gc_blob_reviews")
    op.drop_index(op.f("ix_gc_blob_reviews_digest"), table_name="gc_blob_reviews")
    op.drop_table("gc_blob_reviews")
    op.drop_index(op.f("ix_namespace_blobs_digest"), table_name="namespace_blobs")
    op.drop_table("namespace_blobs")
    with op.batch_alter_table("repository_settings", schema=None) as batch_op:
        batch_op.drop_column("untagged_retention_days")
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_sessions_digest"))
        batch_op.drop_column("digest")
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.drop_index("ix_manifests_config")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("namespaces")
        batch_op.drop_column("links")
    with op.batch_alter_table("repositories", schema=None) as batch_op:
        batch_op.drop_column("stored_blobs")
        batch_op.drop_column("stored_bytes")
