"""Prompt files, the capture run and batches, the file writer and the CLI commands."""
