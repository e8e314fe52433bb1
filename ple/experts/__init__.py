"""ple.experts."""
