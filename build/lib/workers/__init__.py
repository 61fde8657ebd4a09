"""seqguard workers: the Faust app, the ordered processor, the DLQ and the CLI."""
