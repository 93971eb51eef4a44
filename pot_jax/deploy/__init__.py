"""Deployed nodes: real processes that run the protocol over a real network (gRPC streams)."""
