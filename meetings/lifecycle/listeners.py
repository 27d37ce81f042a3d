"""Who hears of an applied transition. The lifecycle core announces; the edges listen.

The core (transitions.py) knows nothing of webhooks, Redis channels or Celery: each edge registers
here, once, from its AppConfig.ready(). Three moments, because each kind of listener has its own
promise:

- `in_transaction(meeting, record)`: inside the transition's transaction, after its record is
  saved. Database writes only (the webhook outbox row): a rolled-back transition leaves none, a
  committed one always has it.
- `notify(meeting, record, pipe)`: after commit, into one Redis pipeline shared by every notifier
  (one round trip on the bot-callback hot path). Notifications, not truth: a Redis outage is
  logged by Django's robust on_commit and never undoes a committed transition.
- `on_terminal(meeting_id)`: after the commit of a transition into a terminal status (enqueue the
  post-meeting work). Each runs in its own robust on_commit, so a failed notifier cannot lose it.
"""
from __future__ import annotations

from typing import Callable

InTransaction = Callable[..., object]  # (meeting, record)
Notifier = Callable[..., object]  # (meeting, record, pipe)
OnTerminal = Callable[[int], object]  # (meeting_id)

IN_TRANSACTION: list[InTransaction] = []
NOTIFIERS: list[Notifier] = []
ON_TERMINAL: list[OnTerminal] = []


def _add(registry: list, listener):
    # Idempotent: an AppConfig.ready() that runs twice (tests) must not announce twice.
    if listener not in registry:
        registry.append(listener)
    return listener


def in_transaction(listener: InTransaction) -> InTransaction:
    return _add(IN_TRANSACTION, listener)


def notify(listener: Notifier) -> Notifier:
    return _add(NOTIFIERS, listener)


def on_terminal(listener: OnTerminal) -> OnTerminal:
    return _add(ON_TERMINAL, listener)
