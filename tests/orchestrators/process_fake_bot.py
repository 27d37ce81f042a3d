"""A stand-in bot for the process backend tests: `python process_fake_bot.py <mode> [arg]`.

Modes: `sleep` (SIGTERM → exit 0), `ignore-term` (only SIGKILL ends it), `exit N`, `env` (prints
BOT_CONFIG and the working directory, then sleeps), `spawn-child PIDFILE` (starts a `sleep` child in
its process group, writes the child's pid, then sleeps). Prints "ready" once its signal handling is
in place, so a test never signals it too early.
"""
import os
import signal
import subprocess
import sys
import time


def main(mode: str, arg: str | None) -> int:
    if mode == "exit":
        return int(arg)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if mode == "env":
        print(f"BOT_CONFIG={os.environ.get('BOT_CONFIG')}")
        print(f"CWD={os.getcwd()}")
    if mode == "spawn-child":
        child = subprocess.Popen(["sleep", "300"])
        with open(arg, "w") as handle:
            handle.write(str(child.pid))
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
