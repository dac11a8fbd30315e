"""Tools for testing cdino itself (fault injection)."""
