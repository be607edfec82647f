"""pipelines/sources"""
