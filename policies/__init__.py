"""Routing policies: built-ins and the kfrouter.policies entry-point loader."""
