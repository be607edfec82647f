"""Pure checks of teacher responses (stable reason codes) and union masks; see docs/filters.md."""
