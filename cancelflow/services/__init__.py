"""Domain operations: plain functions over a Session. They flush, never commit."""
