"""Developer tooling: the local stack and the schema check. Never imported by a service."""
