"""What users read of their meetings: the event log and its live stream."""
