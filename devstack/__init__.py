"""Developer tooling: `make run`'s embedded servers, supervisor and local secrets. The service
imports nothing from here except what settings reads of a local stack (stackinfo, secrets)."""
