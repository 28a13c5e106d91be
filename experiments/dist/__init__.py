"""Distribution: the process group, model wrapping (DDP, FSDP2), the launch check."""
