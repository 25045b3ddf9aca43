"""SQLAlchemy 2 typed models: the source of truth for registry metadata."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _bytewise(length: int) -> String:
    """A string column that sorts by bytes on every backend (lexical order of tags and names)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


DIGEST = String(160)
MEDIA_TYPE = String(255)
TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Repository(Base):
    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(_bytewise(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ)
    # bytes and number of the blobs linked here, kept by triggers on repository_blobs (migration 0009)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    stored_blobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Blob(Base):
    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str | None] = mapped_column(MEDIA_TYPE)
    created_at: Mapped[datetime] = mapped_column(TZ)
    # how many repositories and namespaces (accounts) link the blob, kept by triggers on
    # repository_blobs: what "unique" and "shared" bytes are counted from
    links: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    namespaces: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RepositoryBlob(Base):
    __tablename__ = "repository_blobs"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(TZ)


class Manifest(Base):
    __tablename__ = "manifests"
    __table_args__ = (
        UniqueConstraint("repository_id", "digest"),
        Index("ix_manifests_subject", "repository_id", "subject_digest"),
        # GC asks whether any manifest of a repository still uses a blob as its config
        Index("ix_manifests_config", "repository_id", "config_digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(DIGEST)
    media_type: Mapped[str] = mapped_column(MEDIA_TYPE)
    artifact_type: Mapped[str | None] = mapped_column(MEDIA_TYPE)
    size: Mapped[int] = mapped_column(BigInteger)
    config_digest: Mapped[str | None] = mapped_column(DIGEST)
    subject_digest: Mapped[str | None] = mapped_column(DIGEST)
    # JSON text of the manifest's annotations, for the referrers API
    annotations: Mapped[str | None] = mapped_column(Text)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(TZ)
    last_pulled_at: Mapped[datetime | None] = mapped_column(TZ)


class ManifestLayer(Base):
    __tablename__ = "manifest_layers"

    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(MEDIA_TYPE)


class ManifestChild(Base):
    __tablename__ = "manifest_children"

    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(MEDIA_TYPE)
    # JSON text of the child's platform object, when given
    platform: Mapped[str | None] = mapped_column(Text)


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("repository_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(_bytewise(128))
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), index=True)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class UploadSession(Base):
    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    repository: Mapped[str] = mapped_column(String(255))
    # who started it, for the cap on sessions per principal; None when authentication is off
    principal: Mapped[str | None] = mapped_column(String(255), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ, index=True)
    # set while the finished upload becomes a blob (store commit, then link): GC keeps that blob
    digest: Mapped[str | None] = mapped_column(DIGEST, index=True)


class Account(Base):
    """A customer: owns the namespace `<name>/...` of repositories."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(_bytewise(64), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(TZ)
    # the AuthChanges serial of the last write to the row (what in-memory principal views poll for)
    change_serial: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", index=True)


class Principal(Base):
    """Who can log in: a user (password), an access key (key id + secret) or a robot account.

    `login` is what goes into Basic credentials: the user name, the key id, or `<account>+<robot>`.
    Bumping `token_generation` invalidates every login password issued before.
    """

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    login: Mapped[str] = mapped_column(String(255), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    token_generation: Mapped[int] = mapped_column(Integer, default=0)
    # the user who created an access key (access keys act with their owner's role)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)
    last_used_at: Mapped[datetime | None] = mapped_column(TZ)
    # the AuthChanges serial of the last write to the row
    change_serial: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", index=True)


class AuthChanges(Base):
    """One row counting writes to accounts and principals, so that other processes can ask "what changed
    since serial N" cheaply. Writers increment `serial` in their own transaction (the row lock puts the
    serials in commit order) and stamp the rows they touch; `deletions` counts deletes, which leave no
    row to stamp."""

    __tablename__ = "auth_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger, default=0)
    deletions: Mapped[int] = mapped_column(BigInteger, default=0)


class RepositorySettings(Base):
    """Visibility of a repository; a repository without a row is private."""

    __tablename__ = "repository_settings"

    repository: Mapped[str] = mapped_column(_bytewise(255), primary_key=True)
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    updated_at: Mapped[datetime] = mapped_column(TZ)
    # GC deletes manifests that have had no tag for this many days; None keeps them
    untagged_retention_days: Mapped[int | None] = mapped_column(Integer)


class RepositoryPolicy(Base):
    """A grant of pull or push on a repository to another account (cross-account sharing)."""

    __tablename__ = "repository_policies"

    repository: Mapped[str] = mapped_column(_bytewise(255), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    actions: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TZ)


class AuditEvent(Base):
    """Denied requests, failed logins and management actions: who, what, from where, how it ended
    and why."""

    __tablename__ = "audit_events"
    # an account's admins read its events newest first
    __table_args__ = (Index("ix_audit_events_account_id", "account", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(TZ, index=True)
    event: Mapped[str] = mapped_column(String(32))
    principal: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    # the account acted on, and what in it (management actions)
    account: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    # allowed, denied or failed; the events written before management actions were audited are denials
    outcome: Mapped[str] = mapped_column(String(16), server_default="denied")


class Event(Base):
    """The outbox: a change a user cares about, written in the transaction that makes the change.
    `dispatched` turns true once the webhooks' deliveries of the event exist (in the dispatcher's own
    transaction); a dispatcher takes the undispatched rows, whatever their order of commit."""

    __tablename__ = "events"
    __table_args__ = (
        # GET /api/v1/events: an account's events newest first; the dispatcher's undispatched rows
        Index("ix_events_account_id", "account", "id"),
        Index("ix_events_dispatched_id", "dispatched", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(TZ)
    type: Mapped[str] = mapped_column(String(64))
    account: Mapped[str] = mapped_column(String(64))
    repository: Mapped[str | None] = mapped_column(String(255))
    digest: Mapped[str | None] = mapped_column(DIGEST)
    tag: Mapped[str | None] = mapped_column(String(128))
    media_type: Mapped[str | None] = mapped_column(MEDIA_TYPE)
    size: Mapped[int | None] = mapped_column(BigInteger)
    # JSON text of what else the event carries (a mount's source repository, a moved tag's old digest)
    detail: Mapped[str | None] = mapped_column(Text)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class Webhook(Base):
    """An account's subscription of a URL to event types and repository patterns."""

    __tablename__ = "webhooks"
    # ids are never reused (SQLite would reuse a deleted last one): deliveries are signed with them
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    # comma-separated event types; an empty text is every type
    event_types: Mapped[str] = mapped_column(Text)
    # comma-separated glob patterns of repository names; an empty text is every repository
    repositories: Mapped[str] = mapped_column(Text)
    # the Standard Webhooks signing secret (`whsec_...`): kept as it is, since signing needs it
    secret: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)


class WebhookDelivery(Base):
    """One event on its way to one webhook: pending until a receiver answers 2xx (succeeded) or the
    retry window ends (failed). A dispatcher holds `lease_until` while it sends an attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        # a delivery's id is its message id (webhook-id), which receivers may remember: never reused
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(TZ)
    # the retry window runs from the first attempt (a redelivery by hand opens a new one)
    window_start: Mapped[datetime | None] = mapped_column(TZ)
    lease_until: Mapped[datetime | None] = mapped_column(TZ)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    last_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(TZ)


class WebhookAttempt(Base):
    """One try of a delivery: when, the HTTP status or the error, how long, what the receiver said."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(TZ)
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    # the first KiB of the response body, as text
    response: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    """A background job of the cluster's shared queue (see shipyard.workers.store)."""

    __tablename__ = "jobs"
    __table_args__ = (
        # a worker looks for the earliest due job of the kinds it handles
        Index("ix_jobs_state_run_at", "state", "run_at"),
        # the listing filters by kind, newest first
        Index("ix_jobs_kind_id", "kind", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_at: Mapped[datetime] = mapped_column(TZ)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    last_error: Mapped[str | None] = mapped_column(Text)
    # an enqueue with a key that exists already adds nothing (a schedule's period, a one-off task)
    unique_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)


class JobSchedule(Base):
    """When a schedule's next period is due: the worker that moves it on enqueues that period's job."""

    __tablename__ = "job_schedules"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(TZ)


class NamespaceBlob(Base):
    """How many repositories of a namespace (an account's `<name>/...`) link a blob; kept by triggers on
    repository_blobs. An account's stored bytes are those of its rows, each blob once."""

    __tablename__ = "namespace_blobs"

    namespace: Mapped[str] = mapped_column(_bytewise(255), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True, index=True)
    links: Mapped[int] = mapped_column(Integer, default=0)


class GcBlobReview(Base):
    """A blob that lost a link: GC looks at it once `review_after` has passed. A digest may be queued
    more than once: with no unique key, writers queueing the same digest never wait for each other
    (waits that, with their other locks, could close a cycle); GC handles all copies at once."""

    __tablename__ = "gc_blob_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, index=True)
    review_after: Mapped[datetime] = mapped_column(TZ, index=True)
    # the namespace that last held it, for the report of what was freed by account
    namespace: Mapped[str | None] = mapped_column(String(255))


class GcLinkReview(Base):
    """A blob link that may have no manifest using it (new, or its manifest was deleted); like blob
    reviews, with no unique key."""

    __tablename__ = "gc_link_reviews"
    __table_args__ = (Index("ix_gc_link_reviews_link", "repository_id", "digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(DIGEST)
    review_after: Mapped[datetime] = mapped_column(TZ, index=True)


class GcManifestReview(Base):
    """A manifest that lost its last tag, or was pushed without one, and since when."""

    __tablename__ = "gc_manifest_reviews"

    manifest_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(Integer, index=True)
    queued_at: Mapped[datetime] = mapped_column(TZ)
