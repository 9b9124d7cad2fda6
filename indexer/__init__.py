"""Ingestion, and the parts query time shares with it.

`chunkless ingest` runs here: find the files, read each into text and structure (reading/), embed it
token by token (embedders/), quantize the token vectors (codec.py) and write them with the document's
header to the store (store/). The embedders (which also embed queries), the store (which `retriever`
reads), the codec and the sentence boundaries (boundaries.py) are shared with query time: `retriever`
imports them from here, never the other way.
"""
