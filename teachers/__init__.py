"""Teachers: the prompt data, knowledge table, message building and the teacher backends.

A teacher turns a unit (image x task) into the raw JSON text ``{"pairs": [...]}`` whose
``target_ids`` are local ids of pipelines/core/object_table.py; every backend emits that same shape.
"""
