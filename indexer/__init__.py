"""Ingestion: load files, embed them token by token, quantize, and write them to the store."""
