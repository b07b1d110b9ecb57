"""The job runner: periodic jobs (purges, retention) that run once per period on whichever
node claims them first, with a lease (as the relay queue's rows)."""
