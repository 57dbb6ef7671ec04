"""Placeholder entry until the CLI module lands in this session."""
def main():
    raise SystemExit("kalm-bench CLI under construction")
