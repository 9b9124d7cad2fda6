"""Query time: recall candidate documents, fetch their token matrices, score tokens, return spans."""
