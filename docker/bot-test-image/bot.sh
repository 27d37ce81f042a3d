#!/bin/sh
# Test bot of botmanager's Docker tests: busybox sh, no Python, built without any registry.
#
# It runs until SIGTERM and then exits 0, like a bot that leaves when asked. It speaks the callback
# half of the bot protocol (../../../shared/protocol.md) when BOT_CONFIG has botManagerCallbackUrl:
# `joining` and `started` after start, `exited` (with its exit code) before it ends. It reads no
# Redis commands (busybox has no Redis client): a leave reaches it as the SIGTERM of the stop.
# Test hooks: "test_exit_code": N in BOT_CONFIG makes it exit with N right after starting;
# "test_ignore_sigterm": true, or a botName with ignore_leave (simbot's knob), makes it ignore
# SIGTERM (only SIGKILL ends it), saying so on each one.

json_str() {  # the string value of a top-level key of BOT_CONFIG (flat keys, no escapes: enough here)
    printf '%s' "$BOT_CONFIG" | sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p"
}

callback() {  # name, JSON body; best effort: a bot must not die because the manager is away
    [ -n "$callback_url" ] || return 0
    # `timeout` rather than wget -T, which crashes the static busybox 1.35 wget.
    timeout 5 wget -q -O /dev/null --header 'Content-Type: application/json' \
        --post-data "$2" "$callback_base/$1" || echo "test bot: callback $1 failed"
}

leave() {
    callback exited "{\"connection_id\": \"$connection_id\", \"exit_code\": $1}"
    echo "test bot: leaving with exit code $1"
    exit "$1"
}

# The trap before any work: as PID 1 the shell would ignore a SIGTERM it has no handler for.
trap 'leave 0' TERM INT

callback_url=$(json_str botManagerCallbackUrl)
callback_base=${callback_url%/exited}
connection_id=$(json_str connectionId)

echo "test bot: started as $HOSTNAME"
callback joining "{\"connection_id\": \"$connection_id\", \"container_id\": \"$HOSTNAME\"}"
callback started "{\"connection_id\": \"$connection_id\", \"container_id\": \"$HOSTNAME\"}"

case "$BOT_CONFIG" in
    *'"test_ignore_sigterm": true'*|*'"botName": "simbot:ignore_leave'*) trap 'echo "test bot: SIGTERM ignored"' TERM; echo "test bot: ignoring SIGTERM" ;;
esac

code=$(printf '%s' "$BOT_CONFIG" | sed -n 's/.*"test_exit_code": *\(-\{0,1\}[0-9][0-9]*\).*/\1/p')
[ -z "$code" ] || leave "$code"

# `sleep & wait` rather than `sleep`: the shell runs the TERM trap as soon as the signal arrives.
while :; do
    sleep 1 &
    wait $!
done
