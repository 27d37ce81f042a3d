"""`python -m tests.chaos.bot`: the simulated bot with per-meeting random timings.

The chaos suite sets it as the process backend's PROCESS_BOT_COMMAND. It derives simbot's timing
knobs from (CHAOS_SEED, meeting id), so the harness can compute the same values (to aim a stop at
the moment a bot dies or restarts), appends a start and an exit event to CHAOS_EVENTS_FILE (the
moment of a silent death is the fault moment the suite measures from), and runs simbot in this
process. Imports nothing from Django: it runs as a bot, not as part of the service.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time


def timings(seed: str | int, meeting_id: int) -> dict[str, float]:
    """simbot's SIMBOT_* timing knobs for one meeting (deterministic)."""
    rng = random.Random(f"{seed}:{meeting_id}")
    return {
        "SIMBOT_STEP_SECONDS": round(rng.uniform(0.05, 0.4), 3),
        "SIMBOT_DIE_AFTER_SECONDS": round(rng.uniform(0.5, 6.0), 3),
        "SIMBOT_RESTART_AFTER_SECONDS": round(rng.uniform(0.5, 4.0), 3),
    }


def _event(meeting_id: int, event: str, **fields) -> None:
    path = os.environ.get("CHAOS_EVENTS_FILE")
    if not path:
        return
    line = json.dumps({"meeting_id": meeting_id, "event": event, "t": time.time(), "pid": os.getpid(),
                       **fields}) + "\n"
    # One short O_APPEND write per event: lines from concurrent bots never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> int:
    try:
        meeting_id = int(json.loads(os.environ.get("BOT_CONFIG") or "{}").get("meeting_id") or 0)
    except (ValueError, AttributeError):
        meeting_id = 0
    for name, value in timings(os.environ.get("CHAOS_SEED", "0"), meeting_id).items():
        os.environ[name] = str(value)
    _event(meeting_id, "start")
    from simbot.__main__ import main as simbot_main

    code = simbot_main()
    _event(meeting_id, "exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
