"""Harmony format: rendering conversations to prompt tokens and parsing generated tokens into events."""
