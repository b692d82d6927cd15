"""Tests of seewhy.metrics (a package, so that test_contract.py here and in tests/methods do not collide)."""
