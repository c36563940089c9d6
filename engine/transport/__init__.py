"""callbridge transport layer."""
