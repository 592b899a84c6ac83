"""A domain whose projector and handlers read the event store themselves (event_store type)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tidings import Domain, current_domain, handle
from tidings.domain.errors import ObjectNotFoundError
from tidings.fields import Identifier, Integer, List

CALLS: Counter = Counter()  # (handler, account id, n) -> times the handler code ran
FAILURES: dict[int, int] = {}  # deposit amount -> failures the Auditor still raises


def build_accounts(**subscription: object) -> Domain:
    """`subscription`: extra `subscription_config` for the projector (e.g. messages_per_tick)."""
    domain = Domain("accounts", root_path=Path(__file__).parent)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")

    @domain.aggregate
    class Account:
        deposits: Integer(default=0)
        balance: Integer(default=0)

        def deposit(self, amount: int) -> None:
            self.deposits += 1
            self.balance += amount
            self.raise_(Deposited(account_id=self.id, amount=amount, n=self.deposits))

    @domain.event(part_of=Account)
    class Deposited:
        account_id: Identifier(required=True)
        amount: Integer(required=True)
        n: Integer(required=True)

    @domain.command(part_of=Account)
    class MakeDeposit:
        account_id: Identifier(required=True)
        amount: Integer(required=True)

    @domain.command_handler(part_of=Account)
    class AccountCommands:
        @handle(MakeDeposit)
        def make(self, command: MakeDeposit) -> None:
            repo = current_domain.repository_for(Account)
            account = repo.get(command.account_id)
            account.deposit(command.amount)
            repo.add(account)

    @domain.projection
    class Statement:
        account_id: Identifier(identifier=True)
        history: List(Integer())
        total: Integer(default=0)

    @domain.projector(
        projector_for=Statement,
        aggregates=[Account],
        subscription_profile="projection",
        subscription_config=dict(subscription) or None,
    )
    class StatementProjector:
        @handle(Deposited)
        def deposited(self, event: Deposited) -> None:
            CALLS[("StatementProjector", event.account_id, event.n)] += 1
            repo = current_domain.repository_for(Statement)
            try:
                statement = repo.get(event.account_id)
            except ObjectNotFoundError:
                statement = Statement(account_id=event.account_id)
            statement.history = [*statement.history, event.n]
            statement.total += event.amount
            repo.add(statement)

    @domain.projection
    class Audit:
        entry_id: Identifier(identifier=True)
        amount: Integer(required=True)

    @domain.projector(
        projector_for=Audit,
        aggregates=[Account],
        subscription_type="event_store",
        subscription_config={"max_retries": 2, "retry_delay_seconds": 0},
    )
    class Auditor:
        @handle(Deposited)
        def audit(self, event: Deposited) -> None:
            if FAILURES.get(event.amount, 0) > 0:
                FAILURES[event.amount] -= 1
                raise ConnectionError(f"audit store down for {event.amount}")
            CALLS[("Auditor", event.account_id, event.n)] += 1
            current_domain.repository_for(Audit).add(
                Audit(entry_id=f"{event.account_id}-{event.n}", amount=event.amount)
            )

    @domain.projection
    class Commanded:
        account_id: Identifier(identifier=True)
        count: Integer(default=0)

    @domain.event_handler(
        part_of=Commanded,
        stream_category="account",
        source_stream="account:command",
        subscription_type="event_store",
    )
    class CommandedDeposits:
        """Counts only the deposits raised while handling a command (source_stream)."""

        @handle(Deposited)
        def count(self, event: Deposited) -> None:
            repo = current_domain.repository_for(Commanded)
            try:
                seen = repo.get(event.account_id)
            except ObjectNotFoundError:
                seen = Commanded(account_id=event.account_id)
            seen.count += 1
            repo.add(seen)

    return domain


def open_account(domain: Domain) -> str:
    Account = domain.registry["aggregate"]["Account"]
    with domain.domain_context():
        return domain.repository_for(Account).add(Account()).id


def deposit(domain: Domain, account_id: str, amount: int) -> None:
    """Load, deposit, save: the event commits with the aggregate (origin: no command)."""
    Account = domain.registry["aggregate"]["Account"]
    with domain.domain_context():
        repo = domain.repository_for(Account)
        account = repo.get(account_id)
        account.deposit(amount)
        repo.add(account)


def rows(domain: Domain, projection: str) -> list[dict]:
    model = domain.registry["projection"][projection]
    with domain.domain_context():
        return [r.model_dump() for r in domain.repository_for(model).all()]
