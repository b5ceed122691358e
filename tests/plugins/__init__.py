"""Method modules used by tests through ``FAIRQ_METHOD_MODULES`` (so that they reach other processes too)."""
