"""ple.data."""
