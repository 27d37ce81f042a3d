"""What users read of their meetings: the event log, its live stream, the meeting payload."""
