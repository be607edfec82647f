"""Ground-V on Ray: the pipeline package (plan -> stream -> commit)."""
