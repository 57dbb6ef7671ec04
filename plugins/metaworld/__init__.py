"""Meta-world environment plugin (issue 7): under construction."""
