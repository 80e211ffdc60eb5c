"""Infrastructure every room may use: errors, atomic file output, registries, threads, run guards.

Nothing here knows about a method, a task or a backbone by name; it is the ground floor.
"""
