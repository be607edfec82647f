"""Writers: Parquet shards and receipts."""
