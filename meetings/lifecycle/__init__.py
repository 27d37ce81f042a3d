"""The lifecycle core: statuses and the transition table, the one writer of `Meeting.status`, each
status's deadline, and why the manager ended a meeting."""
