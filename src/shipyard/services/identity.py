"""Who is calling and what they may do: logins, registry tokens, login passwords, and the access
policy that every /v2 request passes through."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NoReturn

from shipyard.auth import tokens
from shipyard.auth.credentials import DUMMY_HASH, hash_secret, new_secret, verify_secret
from shipyard.auth.hashing import HashingPool
from shipyard.auth.keys import KeyRing
from shipyard.auth.limiter import LoginLimiter
from shipyard.auth.scopes import Scope, grants, merge
from shipyard.auth.tokens import TokenRejected
from shipyard.db.accounts import AccountStore
from shipyard.domain.accounts import SUPERUSER_ACCOUNT, PrincipalRecord, actions_for, is_superuser
from shipyard.domain.errors import NameInvalid, NameUnknown, Unauthorized
from shipyard.domain.names import validate_name
from shipyard.services.access import NOBODY, Action, Actor, CatalogFilter, Identity
from shipyard.services.failed_auth import MAX_NAME, FailedAuthAudit, truncate
from shipyard.services.principals import PrincipalView

log = logging.getLogger(__name__)
audit_log = logging.getLogger("shipyard.audit")

ADMIN_ACCOUNT = SUPERUSER_ACCOUNT
ADMIN_USER = "admin"


@dataclass(frozen=True)
class AuthConfig:
    issuer: str = "shipyard"
    service: str = "shipyard"
    token_lifetime: int = 300
    refresh_lifetime: int = 7 * 24 * 3600
    login_password_lifetime: int = 12 * 3600
    # the fixed user name that goes with a login password, as ECR's "AWS"
    login_password_user: str = "shipyard"
    # failed logins allowed per (login, source) and per source within failure_window seconds
    max_failures: int = 10
    max_source_failures: int = 100
    failure_window: float = 300.0
    # keys the limiter remembers; past it, the least recently failing are forgotten first
    limiter_max_entries: int = 50_000
    # argon2 runs on a pool of its own: this many at once, this many more waiting, the rest get 429
    hash_workers: int = 2
    hash_max_waiting: int = 8
    # failed-auth audit events are written once per (event, source, reason) and window; 0: each one
    failed_auth_window: float = 10.0
    # how old the in-memory principal view may get before a check refreshes it (see PrincipalView)
    principal_max_age: float = 5.0


class InvalidCredentials(Unauthorized):
    """Wrong user name or password: the message says so, as clients print only the message."""

    message = "invalid username or password"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str
    access: tuple[Scope, ...]
    refresh_token: str | None = None


@dataclass(frozen=True)
class TokenIdentity(Identity):
    access: tuple[Scope, ...] = field(default=())
    # set when the request carried a valid registry token (an anonymous one counts)
    has_token: bool = False
    principal_id: int | None = None
    # the client address, for the audit log
    source: str | None = None
    # what the token grants, for the services to check
    actor: Actor = NOBODY


class IdentityService:
    def __init__(self, accounts: AccountStore, keys: KeyRing, config: AuthConfig | None = None) -> None:
        self.accounts = accounts
        self.keys = keys
        self.config = config or AuthConfig()
        self.limiter = LoginLimiter(
            self.config.max_failures,
            self.config.failure_window,
            max_source_failures=self.config.max_source_failures,
            max_entries=self.config.limiter_max_entries,
        )
        self.hashing = HashingPool(self.config.hash_workers, self.config.hash_max_waiting)
        self.failed_auth = FailedAuthAudit(self._write_audit, self.config.failed_auth_window)
        self.principals = PrincipalView(accounts, self.config.principal_max_age)
        self._verified: OrderedDict[str, tokens.Claims] = OrderedDict()
        self._verified_lock = threading.Lock()

    # -- audit ---------------------------------------------------------------------------------

    def audit(
        self, event: str, *, principal: str | None, source: str | None, action: str | None, reason: str
    ) -> None:
        self._write_audit(event, truncate(principal), source, action, reason)

    def audit_failure(
        self, event: str, *, principal: str | None, source: str | None, action: str | None, reason: str
    ) -> None:
        """A failed login, a refused token or a denied request: aggregated (see FailedAuthAudit), as
        anyone can cause them at any rate."""
        self.failed_auth.record(event, principal=principal, source=source, action=action, reason=reason)

    def _write_audit(
        self, event: str, principal: str | None, source: str | None, action: str | None, reason: str
    ) -> None:
        audit_log.warning(
            "%s principal=%s source=%s action=%s reason=%s",
            event,
            principal or "-",
            source or "-",
            action or "-",
            reason,
        )
        try:
            self.accounts.audit(event, principal=principal, source=source, action=action, reason=reason)
        except Exception:
            log.exception("could not write the audit event")

    def shutdown(self) -> None:
        """Write the counts of the failed-auth windows still open, and stop the hashing threads."""
        self.failed_auth.flush(everything=True)
        self.hashing.shutdown()

    # -- bootstrap -----------------------------------------------------------------------------

    def bootstrap(self, admin_password: str | None) -> str | None:
        """On the first start, create the account `admin` with the admin user `admin`. Returns the
        generated password when none was given (to be shown once), else None."""
        if self.accounts.get_account(ADMIN_ACCOUNT) is not None:
            return None
        password = admin_password or new_secret(18)
        self.accounts.create_account(ADMIN_ACCOUNT)
        self.accounts.create_principal(
            ADMIN_ACCOUNT, kind="user", login=ADMIN_USER, role="admin", secret_hash=hash_secret(password)
        )
        return None if admin_password else password

    # -- logins --------------------------------------------------------------------------------

    def login(self, login: str, secret: str, source: str) -> PrincipalRecord:
        """Check Basic credentials: a user password, an access key, a robot secret or a login password.
        LoginThrottled (429) when the limiter or the hashing pool refuses, before any hash is computed."""
        if login == self.config.login_password_user:
            return self._login_with_login_password(secret, source)
        # the limiter and the audit keep a cut name: a client may send a name of any length
        name = login[:MAX_NAME]
        self.limiter.check(name, source)
        principal, reason = self._check_credentials(login, secret)
        if principal is None:
            self._login_failed(name, source, reason)
        self.limiter.succeed(name, source)
        return principal

    def _login_failed(self, login: str, source: str, reason: str) -> NoReturn:
        self.limiter.fail(login, source)
        self.audit_failure("login-failed", principal=login, source=source, action="login", reason=reason)
        raise InvalidCredentials("invalid credentials")

    def _login_with_login_password(self, secret: str, source: str) -> PrincipalRecord:
        """Failures count against the principal the password names when its signature holds, so that
        someone else's garbage from the same address blocks no one; unsigned garbage can only count
        against the fixed user name at that address, and is looked at before the limiter is."""
        try:
            claims = tokens.verify(
                self.keys, secret, issuer=self.config.issuer, audience=f"{self.config.service}/login"
            )
        except TokenRejected as exc:
            self.limiter.check(self.config.login_password_user, source)
            self._login_failed(
                self.config.login_password_user, source, f"login password rejected: {exc.reason}"
            )
        # the principal's login: its login passwords and its own secret share one failure count
        who = claims.subject or self.config.login_password_user
        self.limiter.check(who, source)
        principal, reason = self.principal_for_token(claims)
        if principal is None:
            self._login_failed(who, source, f"login password: {reason}")
        self.limiter.succeed(who, source)
        return principal

    def _check_credentials(self, login: str, secret: str) -> tuple[PrincipalRecord | None, str]:
        # no principal has such a name (the column holds 255; PostgreSQL refuses NUL): no query
        found = None if len(login) > 255 or "\x00" in login else self.accounts.get_principal(login)
        if found is None:
            # same cost as a real check: timing tells nothing
            self.hashing.run(verify_secret, DUMMY_HASH, secret)
            return None, "unknown principal"
        principal, secret_hash = found
        if not self.hashing.run(verify_secret, secret_hash, secret):
            return None, "bad secret"
        if not principal.active:
            return None, "principal or account disabled"
        return principal, ""

    def principal_for_token(self, claims: tokens.Claims) -> tuple[PrincipalRecord | None, str]:
        """The principal a verified token names, from the in-memory view (no database query), if it
        is still active and the token is of its current generation."""
        principal_id = claims.extra.get("pid")
        if not isinstance(principal_id, int):
            return None, "token names no principal"
        principal = self.principals.get(principal_id, issued_at=claims.issued_at)
        if principal is None:
            return None, "principal no longer exists"
        if not principal.active:
            return None, "principal or account disabled"
        if claims.extra.get("gen") != principal.token_generation:
            return None, "token generation was bumped"
        return principal, ""

    def issue_login_password(self, principal: PrincipalRecord, source: str = "local") -> tuple[str, int]:
        """A 12-hour password for `docker login -u <login_password_user>`; verified by signature.
        The issue is audited (never the password)."""
        password, claims = tokens.issue(
            self.keys,
            issuer=self.config.issuer,
            subject=principal.login,
            audience=f"{self.config.service}/login",
            lifetime=self.config.login_password_lifetime,
            extra={"pid": principal.id, "acct": principal.account, "gen": principal.token_generation},
        )
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims.expires_at))
        try:
            self.accounts.record_event(
                "login-password.issue",
                principal=principal.login,
                source=source,
                account=principal.account,
                target=principal.login,
                outcome="allowed",
                reason=f"expires {expires}",
            )
        except Exception:
            log.exception("could not write the audit event")
        return password, claims.expires_at

    def refresh(self, refresh_token: str, source: str) -> PrincipalRecord:
        try:
            claims = tokens.verify(
                self.keys, refresh_token, issuer=self.config.issuer, audience=f"{self.config.service}/refresh"
            )
        except TokenRejected as exc:
            self.audit_failure(
                "refresh-failed", principal=None, source=source, action="refresh", reason=exc.reason
            )
            raise Unauthorized("invalid refresh token") from None
        principal, reason = self.principal_for_token(claims)
        if principal is None:
            self.audit_failure(
                "refresh-failed", principal=claims.subject, source=source, action="refresh", reason=reason
            )
            raise Unauthorized("invalid refresh token")
        return principal

    # -- registry tokens -----------------------------------------------------------------------

    def grant(self, principal: PrincipalRecord | None, requested: Iterable[Scope]) -> list[Scope]:
        """The intersection of the requested scopes and the principal's rights."""
        granted: list[Scope] = []
        for scope in merge(requested):
            if scope.type == "repository":
                try:
                    validate_name(scope.name)
                except NameInvalid:
                    continue
                rights = actions_for(principal, self.accounts.repository_access(scope.name))
                wanted = rights if "*" in scope.actions else scope.actions & rights
                if wanted:
                    granted.append(Scope("repository", scope.name, frozenset(wanted)))
            elif scope.type == "registry" and scope.name == "catalog" and "*" in scope.actions:
                # everyone may ask; the listing shows only what the caller may see
                granted.append(scope)
        return granted

    def issue_token(
        self, principal: PrincipalRecord | None, requested: Iterable[Scope], *, with_refresh: bool = False
    ) -> IssuedToken:
        access = self.grant(principal, requested)
        extra: dict[str, object] = {}
        if principal is not None:
            extra = {"pid": principal.id, "acct": principal.account, "gen": principal.token_generation}
        token, claims = tokens.issue(
            self.keys,
            issuer=self.config.issuer,
            subject=principal.login if principal else "",
            audience=self.config.service,
            lifetime=self.config.token_lifetime,
            access=access,
            extra=extra,
        )
        refresh = None
        if with_refresh and principal is not None:
            refresh, _ = tokens.issue(
                self.keys,
                issuer=self.config.issuer,
                subject=principal.login,
                audience=f"{self.config.service}/refresh",
                lifetime=self.config.refresh_lifetime,
                extra={"pid": principal.id, "gen": principal.token_generation},
            )
        issued_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims.issued_at))
        return IssuedToken(token, self.config.token_lifetime, issued_at, tuple(access), refresh)

    def verify_token(self, token: str) -> tokens.Claims:
        """Verify a registry token; verified tokens are cached for the rest of their lifetime."""
        now = time.time()
        with self._verified_lock:
            cached = self._verified.get(token)
        if cached is not None and now <= cached.expires_at + tokens.LEEWAY_SECONDS:
            return cached
        claims = tokens.verify(self.keys, token, issuer=self.config.issuer, audience=self.config.service)
        with self._verified_lock:
            self._verified[token] = claims
            while len(self._verified) > 10_000:
                self._verified.popitem(last=False)
        return claims


class TokenAccess:
    """The AccessPolicy of a registry with authentication: Bearer tokens from /token."""

    def __init__(self, identity: IdentityService) -> None:
        self.identity = identity
        # (Authorization header, source) -> (identity, valid until, principal view version): a request
        # with a token seen before costs one dict lookup while the token lives and the view is unchanged
        self._known: dict[tuple[str, str | None], tuple[TokenIdentity, float, int]] = {}

    def known_caller(self, authorization: str | None, source: str | None = None) -> Identity | None:
        """A token seen before, while it lives and the principal view is fresh and unchanged: a dict
        lookup. Anything else is checked against the view, which may have to ask the database."""
        if not authorization:
            return _NO_TOKEN
        known = self._known.get((authorization, source))
        if known is not None:
            seen, valid_until, seen_version = known
            if seen_version == self.identity.principals.current_version() and time.time() <= valid_until:
                return seen
        return None

    def authenticate(self, authorization: str | None, source: str | None = None) -> Identity:
        known = self.known_caller(authorization, source)
        if known is not None or not authorization:
            return known or _NO_TOKEN
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return _NO_TOKEN
        try:
            claims = self.identity.verify_token(credentials.strip())
        except TokenRejected as exc:
            self._reject(None, source, exc.reason)
        # taken before the principal is checked: a change applied meanwhile makes the entry stale
        version = self.identity.principals.current_version()
        principal_id = None
        if claims.subject:
            # a token outlives its principal's disabling or revocation by at most the view's max age
            principal, reason = self.identity.principal_for_token(claims)
            if principal is None:
                self._reject(claims.subject, source, reason)
            principal_id = principal.id
        identity = TokenIdentity(
            claims.subject,
            anonymous=not claims.subject,
            access=claims.access,
            has_token=True,
            principal_id=principal_id,
            source=source,
            actor=Actor.granted(claims.subject, ((a.type, a.name, a.actions) for a in claims.access)),
        )
        if version is not None:
            if len(self._known) >= 10_000:  # bound memory under a spray of tokens
                self._known.clear()
            self._known[(authorization, source)] = (
                identity,
                claims.expires_at + tokens.LEEWAY_SECONDS,
                version,
            )
        return identity

    def _reject(self, principal: str | None, source: str | None, reason: str) -> NoReturn:
        """The audit event is written by whoever answers (see Unauthorized.record), off the event loop."""

        def record() -> None:
            self.identity.audit_failure(
                "token-rejected", principal=principal, source=source, action=None, reason=reason
            )

        raise Unauthorized("invalid token", extra={"error": "invalid_token"}, record=record) from None

    def require_authenticated(self, identity: Identity) -> None:
        if not (isinstance(identity, TokenIdentity) and identity.has_token):
            raise Unauthorized("authentication required")

    def catalog_filter(self, identity: Identity) -> CatalogFilter | None:
        public = frozenset(self.identity.accounts.public_repositories())
        principal = None
        if isinstance(identity, TokenIdentity) and identity.principal_id is not None:
            principal = self.identity.principals.get(identity.principal_id)
        if principal is None or not principal.active:
            return CatalogFilter((), public)
        if is_superuser(principal):
            return None
        shared = frozenset(self.identity.accounts.shared_with(principal.account))
        return CatalogFilter((principal.account,), public | shared)

    def authorizes_instantly(self, identity: Identity, repository: str | None, action: Action) -> bool:
        """Only a push asks more than the token: whether the account exists, which the principal view
        knows without a query while it is fresh and names the account."""
        if action != "push" or repository is None:
            return True
        return self.identity.principals.knows_account(repository.partition("/")[0])

    def authorize(self, identity: Identity, repository: str | None, action: Action) -> None:
        if self.allowed_scope(identity, repository, action):
            if action == "push" and repository is not None:
                self._require_account(repository)
            return
        scope = (
            "registry:catalog:*" if repository is None else f"repository:{repository}:{_challenge(action)}"
        )
        if isinstance(identity, TokenIdentity) and identity.has_token:

            def record() -> None:
                # anonymous tokens are free: aggregated as failures are
                self.identity.audit_failure(
                    "access-denied",
                    principal=identity.subject or "anonymous",
                    source=identity.source,
                    action=f"{action} {repository or 'catalog'}",
                    reason="token does not grant this action",
                )

            raise Unauthorized(
                "insufficient scope", extra={"scope": scope, "error": "insufficient_scope"}, record=record
            )
        raise Unauthorized("authentication required", extra={"scope": scope})

    def actor(self, identity: Identity) -> Actor:
        return identity.actor if isinstance(identity, TokenIdentity) else NOBODY

    def _require_account(self, repository: str) -> None:
        """A push creates the repository: only inside an account's namespace, or it would hold a
        repository that no account owns and no management command can see or delete."""
        account, slash, _ = repository.partition("/")
        if not slash:
            raise NameUnknown(f"repository names are ACCOUNT/NAME; {repository!r} names no account")
        if not self.identity.principals.has_account(account):
            raise NameUnknown(
                f"no account {account!r}: create it (shipyard accounts create {account}) "
                f"before pushing to {repository}"
            )

    @staticmethod
    def allowed_scope(identity: Identity, repository: str | None, action: Action) -> bool:
        if not isinstance(identity, TokenIdentity):
            return False
        if repository is None:
            return grants(identity.access, "registry", "catalog", "*")
        return grants(identity.access, "repository", repository, action)


_NO_TOKEN = TokenIdentity("", anonymous=True)


def _challenge(action: Action) -> str:
    # clients ask for pull with push; the challenge names what the request needs
    return "pull,push" if action == "push" else action
