"""Domain logic and platform glue shared by the XPipe functions, the step runtime and the CLI."""
