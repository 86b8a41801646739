"""Other tools on the same cases as ours, run the way their users run them (the `peers` extra)."""
