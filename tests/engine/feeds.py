"""A tiny domain fed by an external stream: for the subscriber path."""

from __future__ import annotations

from pathlib import Path

from tidings import Domain, current_domain
from tidings.domain.errors import ObjectNotFoundError
from tidings.fields import Identifier, Integer


class MailRefused(Exception):
    """An ordinary handler failure (not a transient fault): retried per max_retries."""


POISON = "poison"
ERRORS_SEEN: list[str] = []


def build_feeds(broker: dict, name: str = "feeds") -> Domain:
    """Subscriber `Signups` reads stream `signups` from the broker `feed` (settings `broker`)."""
    domain = Domain(name, root_path=Path(__file__).parent)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")
    domain.config["brokers"]["feed"] = dict(broker)

    @domain.aggregate
    class Member:
        user_id: Identifier(identifier=True)
        welcomed: Integer(default=0)

    @domain.subscriber(
        stream="signups",
        broker="feed",
        subscription_config={"max_retries": 2, "retry_delay_seconds": 0, "messages_per_tick": 2},
    )
    class Signups:
        def __call__(self, payload):
            if payload["user"] == POISON:
                raise MailRefused("the mail service refused the poison user")
            repo = current_domain.repository_for(Member)
            try:
                member = repo.get(payload["user"])
            except ObjectNotFoundError:
                member = Member(user_id=payload["user"])
            member.welcomed += 1
            repo.add(member)

        @classmethod
        def handle_error(cls, exc, message):
            ERRORS_SEEN.append(type(exc).__name__)

    return domain


def welcomed(domain: Domain) -> dict[str, int]:
    with domain.domain_context():
        return {
            m.user_id: m.welcomed for m in domain.repository_for(domain.registry["aggregate"]["Member"]).all()
        }
