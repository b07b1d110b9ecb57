"""CNAM prevention campaigns: targeting, signed target files, store-once fan-out, progress, recall."""
