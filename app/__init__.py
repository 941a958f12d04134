"""A service skeleton around an in-process, string-named event registry."""
