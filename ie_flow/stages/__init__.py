"""Pipeline stages: pure work on one shard / one layer group; runtime.py decides where it runs."""
