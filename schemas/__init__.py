"""Arrow schemas and the manifest model: the one place where columns are defined."""
