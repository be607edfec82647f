"""pipelines/storage"""
