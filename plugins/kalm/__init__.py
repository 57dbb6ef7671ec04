"""LLM backends, grounding tasks and KALM (issue 5): under construction."""
