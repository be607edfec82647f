"""COCO / LVIS / PACO annotation JSON (or per-image records) -> IMAGE_SCHEMA rows (one per image)."""

from pipelines.sources.readers.annotations import (
    FORMATS,
    REASON_CODES,
    image_file_name,
    load_annotation_data,
    load_annotation_json,
    read_source,
)
from pipelines.sources.readers.categories import AnnotationFileError, clean_name
from pipelines.sources.readers.records import RECORD_SUFFIXES, is_record_file

__all__ = [
    "FORMATS",
    "RECORD_SUFFIXES",
    "REASON_CODES",
    "AnnotationFileError",
    "clean_name",
    "image_file_name",
    "is_record_file",
    "load_annotation_data",
    "load_annotation_json",
    "read_source",
]
