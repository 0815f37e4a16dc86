"""The file contract: layout, reader, selection grammar, token groups, liveness (torch-free)."""
