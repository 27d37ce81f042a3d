"""Bot backends behind one small interface. This package knows containers, not meetings: it
imports nothing from `meetings/`."""
