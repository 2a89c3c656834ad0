"""Neural networks of Portrait4D-v2 (no imports here: import the sub-modules directly)."""
