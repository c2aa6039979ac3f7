"""The recurrent cells: one module each, sharing ``base``."""
