"""The command line: arguments, exit codes, progress bars and what each command prints."""
