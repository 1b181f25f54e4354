"""Durable call records: what happened on each call, written at hangup."""
