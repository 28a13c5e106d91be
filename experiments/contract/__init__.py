"""The run record's schema, units and atomic writes: the torch-free contract analysis reads."""
