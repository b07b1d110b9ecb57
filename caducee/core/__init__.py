"""Shared mechanisms: no tables, no component imports (group commit, throttles, connection
ceilings, single flight, the CPU pool, password hashing, the clock, id types, SQL helpers).
Every component may use them; they use no component."""
