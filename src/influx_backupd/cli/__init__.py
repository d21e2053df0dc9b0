"""The command line: parse, load the config, call one action, print, exit status."""
