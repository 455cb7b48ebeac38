"""Batch work on the whole portfolio: scoring, monitoring, backtest, their reports and commands."""
