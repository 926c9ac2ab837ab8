"""Supervision of the managed process: spawning, signals, reaping and its state."""
