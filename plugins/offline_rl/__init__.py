"""Offline-RL algorithms on d3rlpy (issue 4): under construction."""
