"""Implementations of the `raytopo` subcommands (argument parsing lives in raytopo/cli.py)."""
