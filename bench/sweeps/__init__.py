"""Sweeps' scaling: the same equal jobs on a local Ray instance with one worker slot and with two."""
