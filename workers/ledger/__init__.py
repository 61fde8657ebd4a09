"""Idempotency ledgers: effects applied once per (namespace, effect, key), in Redis or PostgreSQL."""
