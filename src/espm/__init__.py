"""espm: a lightweight PID 1 process manager for Elasticsearch containers."""

__version__ = "0.1.0"
