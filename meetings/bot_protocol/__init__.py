"""Talking with bots: their callbacks, the Redis command channels, their vocabulary, their token."""
