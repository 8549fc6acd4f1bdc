"""Bad input is one line and exit status 2: UserError, and an argument parser that raises it."""
import argparse


class UserError(Exception):
    """Bad input from the user (arguments, config, data on disk): say what is wrong and what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a wrong or missing argument is a UserError: one line, not the usage block."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def at_least(minimum: int):
    """An argparse type: an integer >= minimum, else a one-line error naming the bound."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum, {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def device(text: str) -> str:
    """An argparse type: "auto", "cpu", "cuda" or "cuda:N" for a GPU that is there."""
    import torch

    if text in ("auto", "cpu"):
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type != "cuda":
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu and cuda devices are supported")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is visible here (use cpu, or auto)")
    if dev.index is not None and dev.index >= count:
        raise argparse.ArgumentTypeError(f"{text!r}: only {count} CUDA GPU(s) visible (cuda:0 .. cuda:{count - 1})")
    return text
