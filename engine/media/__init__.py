"""callbridge media layer."""
