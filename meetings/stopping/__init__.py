"""The stop flow and the sweep: stop requests, stopping bots without waiting, the post-meeting step,
the orphan sweep and the backend instances it judges."""
