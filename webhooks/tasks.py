"""Every Celery task of the webhooks, defined (with its queue) beside the work it runs in
`delivery`; Celery's autodiscovery imports this module. Idempotent: a duplicate or early run
finds nothing due and sends nothing."""
from __future__ import annotations

from webhooks.delivery import attempt as deliver_webhook, redrive

__all__ = ["deliver_webhook", "redrive"]
