"""Telling people: the notifier (email through a relay, or .eml files in the outbox) and the new-mail alerts built on it."""
