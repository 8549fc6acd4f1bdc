"""The one exception type that the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (arguments, config, data on disk): say what is wrong and what to do."""
