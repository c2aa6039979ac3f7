"""Primitives that know no cell: the linear recurrence and its hand-written backward."""
