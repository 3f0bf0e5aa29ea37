"""Test support that ships with the code: named fault points (faults.py)."""
