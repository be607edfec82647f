"""How good is a version: a human audit (sample -> review page -> report) and a dataset card.

Layering: reads committed versions through pipelines/storage and draws with pipelines/consumers;
nothing in the build imports this package. docs/quality.md explains the statistics.
"""
