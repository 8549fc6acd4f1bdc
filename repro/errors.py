"""Bad input is one line and exit status 2: UserError, and an argument parser that raises it."""
import argparse


class UserError(Exception):
    """Bad input from the user (arguments, config, data on disk): say what is wrong and what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a wrong or missing argument is a UserError: one line, not the usage block."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")
