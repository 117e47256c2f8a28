"""Pipeline stages: each a pure function plus a thin `python -m tasks.<stage>` entry point."""
