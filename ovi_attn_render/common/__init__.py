"""Shared by both packages and every command: user errors, atomic writes, progress, units, option parsers, test hooks."""
