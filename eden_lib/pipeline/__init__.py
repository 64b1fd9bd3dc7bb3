"""One module per DVC stage: what each notebook calls."""
