"""Every patch of a third-party library's internals, in one place (applied by `patches.apply()`)."""
