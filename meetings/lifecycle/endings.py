"""Why the manager itself ended (or began ending) a meeting, in words a client reads.

The sweep, the stop flow's finalizer, an operator and the lost-instance policy end meetings whose
bot said nothing; their `Meeting.data` says why: `last_error` for a failure, `completion_detail` for a
completion (beside `completion_reason`). Each function returns the `data` updates of one ending.
"""
from __future__ import annotations

from meetings.lifecycle.deadlines import DEADLINES, FAIL
from orchestrators.base import BotInfo, NormalizedStatus

# A backend's reason, as much of it as a person reads (a Kubernetes message can run long).
FAILURE_REASON_MAX = 300


def deadline_passed(status: str) -> dict:
    """The `data` of the ending the manager makes when `status`'s deadline passes (the sweep; the
    stop flow's finalizer for `stopping`), in the words of its deadline (meetings/lifecycle/deadlines.py)."""
    deadline = DEADLINES[status]
    key = "last_error" if deadline.act == FAIL else "completion_detail"
    return {key: deadline.ending.format(seconds=deadline.seconds())}


def container_gone(status: str, bot: BotInfo | None) -> dict:
    """The sweep found the bot's container gone or exited without its exit callback."""
    if bot is None:
        seen = "no longer listed by its backend"
    else:
        code = "unknown" if bot.exit_code is None else bot.exit_code
        seen = f"{bot.status.value.lower()}, exit code {code}"
        if bot.status is NormalizedStatus.FAILED and bot.raw_status:
            # The backend's reason (an image that cannot be pulled, an eviction, OOM): what the
            # user or the operator can act on.
            seen = f"failed: {bot.raw_status[:FAILURE_REASON_MAX]}, exit code {code}"
    if status == "stopping":
        return {"completion_detail": f"Bot container gone after the stop ({seen}); its exit was never reported, "
                                     "so the manager finalized the meeting."}
    return {"last_error": f"Bot container gone while {status} ({seen}); the bot never reported its exit."}


def lost_instance(status: str, instance: str, by: str) -> dict:
    """`instance` (a host name, a state directory) is the operator's: it is in the transition's
    metadata (the admin), not in what the tenant reads."""
    if status == "stopping":
        return {"completion_detail": f"The bot's host was declared lost by {by} after the stop; "
                                     "the meeting was finalized."}
    return {"last_error": f"The bot's host was lost (declared by {by}) while {status}."}


# --- Failures of our own machinery ----------------------------------------------------------------
# The tenant reads a short cause it can act on; the full error (engine text with hosts, file paths,
# image names, broker addresses) goes to the log and to the transition's `metadata.error`, which the
# Django admin shows and the API does not: engine text tells a tenant about our hosts.
def error_text(exc: BaseException) -> str:
    """The full error, for the log and the transition's metadata (capped like other free text)."""
    return f"{type(exc).__name__}: {exc}"[:4000]


def launch_failed(exc: BaseException) -> dict:
    if isinstance(exc, ValueError):
        cause = "the bot's configuration could not be built from this meeting's data"
    else:
        cause = "the bot backend could not start the bot"
    return {"last_error": f"Bot launch failed: {cause}. The operator's log has the details; "
                          "request the bot again, or ask the operator if this persists."}


def credentials_failed() -> dict:
    """The bot's Redis user could not be made: the error names the operator's Redis and settings
    (what to do is the operator's, so it goes to the log and the admin, not to the tenant)."""
    return {"last_error": "Bot launch failed: the bot's own Redis credentials could not be made. The operator's "
                          "log has the details; ask the operator."}


def launch_not_enqueued() -> dict:
    return {"last_error": "Bot launch could not be enqueued: the task queue is unavailable. "
                          "Request the bot again shortly."}


def by_operator(to_status: str) -> dict:
    """An operator finalized it by hand (the Django admin); who is in the transition, not here."""
    if to_status == "completed":
        return {"completion_detail": "Finalized by an operator of the bot manager."}
    return {"last_error": "Ended by an operator of the bot manager."}
