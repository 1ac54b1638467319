"""Subcommands of the ``mechscope`` CLI that span several packages (harvest, evaluate, demo)."""
