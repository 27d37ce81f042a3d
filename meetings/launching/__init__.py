"""Launching and scheduling bots: the launch task's work, scheduled bots, each bot's Redis user."""
