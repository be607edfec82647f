"""COCO / LVIS / PACO annotation JSON -> IMAGE_SCHEMA rows (one per image)."""

from pipelines.sources.readers.annotations import (
    FORMATS,
    REASON_CODES,
    image_file_name,
    load_annotation_json,
    read_source,
)
from pipelines.sources.readers.categories import AnnotationFileError, clean_name

__all__ = [
    "FORMATS",
    "REASON_CODES",
    "AnnotationFileError",
    "clean_name",
    "image_file_name",
    "load_annotation_json",
    "read_source",
]
