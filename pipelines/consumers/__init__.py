"""pipelines/consumers"""
