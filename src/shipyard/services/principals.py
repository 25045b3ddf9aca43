"""An in-memory view of every principal and account, so that checking a login password or a registry
token costs dictionary lookups, not a database query, while a principal can still be cut off early.

Freshness: a write made through this process's AccountStore updates the view before the write returns.
Writes made by other processes (other server workers) are picked up by `refresh`, which asks the
database only "what changed after serial N" (see `AccountStore.auth_changes_since`). `refresh` runs
on a timer, and a lookup that finds the view older than `max_age` seconds refreshes it first, so an
answer never reflects a database older than `max_age` seconds (plus one query's duration).

When the database cannot be reached the view keeps answering from the last state it read (nothing can be
disabled while writes fail either), and retries every `max_age` seconds. A view that has never loaded
knows no one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from shipyard.db.accounts import AccountStore, AuthChangeSet
from shipyard.domain.accounts import PrincipalRecord

log = logging.getLogger(__name__)

# a token issued this many seconds before the view's last refresh, naming a principal the view does not
# know, was issued before the principal could have been deleted (clocks of workers may differ slightly)
_CLOCK_SKEW = 2.0


class PrincipalView:
    def __init__(
        self,
        store: AccountStore,
        max_age: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_age = max_age
        self._clock = clock
        self._wall_clock = wall_clock
        self._principals: dict[int, PrincipalRecord] = {}
        # account name -> disabled
        self._accounts: dict[str, bool] = {}
        self._serial = -1  # nothing loaded yet
        self._deletions = 0
        self._fresh_until = float("-inf")  # on the monotonic clock
        self._loaded_at = float("-inf")  # on the wall clock, when the last refresh began
        self._failing = False
        self._lock = threading.Lock()
        # bumped whenever a change is applied: an answer derived from the view at version N still holds
        # while the view is fresh and at version N
        self.version = 0
        store.add_change_listener(self._changed_here)

    @property
    def loaded(self) -> bool:
        return self._serial >= 0

    def get(self, principal_id: int, *, issued_at: float | None = None) -> PrincipalRecord | None:
        """The principal as of at most `max_age` seconds ago, or None if it does not exist.

        `issued_at` (wall clock) is when the token naming the principal was issued: a principal unknown
        to a view refreshed before then may have been created since, by another process, so the view
        refreshes once more before saying it does not exist."""
        if self._clock() >= self._fresh_until:
            self._refresh(wait=not self.loaded)
        principal = self._principals.get(principal_id)
        if principal is None:
            if issued_at is None or issued_at < self._loaded_at - _CLOCK_SKEW or self._failing:
                return None
            self._refresh(wait=True)
            principal = self._principals.get(principal_id)
            if principal is None:
                return None
        account_disabled = self._accounts.get(principal.account, True)
        if account_disabled != principal.account_disabled:
            principal = replace(principal, account_disabled=account_disabled)
        return principal

    def has_account(self, name: str) -> bool:
        """Whether the account exists. A name the view does not know is looked up once more, since
        another process may have created the account after the view's last refresh."""
        if self._clock() >= self._fresh_until:
            self._refresh(wait=not self.loaded)
        if name in self._accounts:
            return True
        return self._refresh(wait=True) and name in self._accounts

    def knows_account(self, name: str) -> bool:
        """Whether the account exists, as far as the view can tell without a query: False also when
        the view is stale or does not know the name (then `has_account` asks the database)."""
        return self._clock() < self._fresh_until and name in self._accounts

    def current_version(self) -> int | None:
        """The view's version while it is fresh, else None (a lookup would refresh it first)."""
        if self._clock() >= self._fresh_until:
            return None
        return self.version

    def refresh(self) -> bool:
        """Apply what changed in the database since the last refresh (everything, the first time).
        False when the database could not be read."""
        return self._refresh(wait=True)

    def _changed_here(self) -> None:
        if not self._refresh(wait=True):
            self._fresh_until = float("-inf")  # the next lookup tries again

    def _refresh(self, *, wait: bool) -> bool:
        # Without `wait`, a lookup that finds another thread refreshing answers from the view as it is.
        if not self._lock.acquire(blocking=wait):
            return True
        try:
            started, started_wall = self._clock(), self._wall_clock()
            try:
                changes = self.store.auth_changes_since(self._serial, self._deletions)
            except Exception:
                # answer from what we have; try again in max_age seconds, not on every lookup
                self._fresh_until = started + self.max_age
                if not self._failing:
                    log.warning(
                        "could not refresh the principal view; answering from its last state", exc_info=True
                    )
                self._failing = True
                return False
            if changes is not None:
                self._apply(changes)
            self._failing = False
            self._loaded_at = started_wall
            self._fresh_until = started + self.max_age
            return True
        finally:
            self._lock.release()

    def _apply(self, changes: AuthChangeSet) -> None:
        if self._serial < 0:
            self._principals = {p.id: p for p in changes.principals}
            self._accounts = dict(changes.accounts)
        else:
            # readers in other threads see each key replaced whole
            self._accounts.update(changes.accounts)
            for principal in changes.principals:
                self._principals[principal.id] = principal
            if changes.existing_principals is not None:
                for gone in self._principals.keys() - changes.existing_principals:
                    del self._principals[gone]
            if changes.existing_accounts is not None:
                for name in self._accounts.keys() - changes.existing_accounts:
                    del self._accounts[name]
        self._serial = changes.serial
        self._deletions = changes.deletions
        self.version += 1
