"""The retail example's tools: ``order_service`` (a tiny local order system that stands in for a
shop's real one) and ``returns`` (a Python tool). See README "Give your agent tools"."""
