"""pagewire's contract: messages, names, error codes, settings, tables and the S3 layout."""
