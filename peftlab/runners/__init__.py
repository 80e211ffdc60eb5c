"""Runners turn a prepared model and a task into a RunResult."""
