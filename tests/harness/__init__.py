"""Test-only harnesses (not part of the installed carom package)."""
