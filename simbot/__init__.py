"""simbot: a simulated meeting bot that speaks the real bot protocol (BOT_CONFIG, HTTP callbacks,
Redis command channels) without joining any meeting. Run it with `python -m simbot`.

It imports nothing from the service: only the standard library and the `redis` package, so it
tests the wire contract, not shared code.
"""
