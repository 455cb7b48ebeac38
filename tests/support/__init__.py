"""Helpers the test modules share (servers, load clients, data builders): never test modules."""
