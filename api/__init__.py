"""HTTP API: request/response shapes and their translation to the memory service."""
