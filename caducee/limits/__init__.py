"""Limits every node sees alike: login lock-out counters and per-address throttles, and
"at most once per window" claims (new-mail alerts). Kept in the database, because counters
kept in each process gave an attacker N times the guesses on N nodes and patients N alerts."""
