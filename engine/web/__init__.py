"""callbridge web layer."""
