"""ragtune: core settings, errors and the command line shared by every package."""
