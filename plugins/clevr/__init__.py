"""CLEVR-Robot environment plugin (issue 3): under construction."""
