"""Instruction encoders (issue 4): under construction."""
