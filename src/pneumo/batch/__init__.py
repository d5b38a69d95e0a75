"""Archive-scale prediction (`pneumo batch`) into a resumable Parquet dataset."""
