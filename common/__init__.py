"""Shared building blocks every app may use: JSON bodies and errors, strict fields, rate limits,
compiled statements, Redis pools. The bottom layer: it imports no app."""
