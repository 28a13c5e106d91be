"""The torch-free contract analysis reads: record schema, units, atomic writes, task protocol."""
