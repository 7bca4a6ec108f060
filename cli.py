"""What every door shares: one-line errors (UserError -> `error: ...`, exit 2), the argparse wrapper, run_main."""
import argparse
import math
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input from the command line or the disk: reported as one line, exit code 2, no traceback."""


class ShowDefaults(argparse.HelpFormatter):
    """--help shows every option's default (argparse's own formatter skips options without help text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action, argparse._StoreFalseAction)
        if action.option_strings and shown and "default" not in text:  # --no-cos's True is --cos's default
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors (one line, like every other bad input) and whose --help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", ShowDefaults)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") is float:
            kwargs["type"] = finite_float
        if not kwargs.get("help") and kwargs.get("action") not in ("store_true", "store_false"):
            kwargs["help"] = "default: %(default)s"  # argparse shows nothing for an option without help text
        return super().add_argument(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def finite_float(text):
    """A float option's type: nan and inf are refused when parsed, before they can train at a constant loss or score."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seed(text):
    """A --seed: numpy's and the loaders' generators take 0 ... 2**32 - 1, and each process adds its rank to it."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2**31), got {value}")
    return value


def make_dirs(path, what="directory"):
    """mkdir -p for an output path, where a file in the way (or no permission) is bad input, not a traceback."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {what} {path}: {error.strerror}") from None
    return Path(path)


def str2bool(value):
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "1", "yes", "y"):
        return True
    if value.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True/False/1/0/yes/no, got {value!r}")


def one_line(error):
    """The message of a UserError, unwrapped when a DataLoader worker raised it: torch re-raises it in the main process
    with the worker's whole traceback as its text ("Caught UserError in DataLoader worker process 0 ...")."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(error):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("UserError") else last
    return " ".join(line.strip() for line in lines)


def fail(message):
    """The one place a door turns a UserError into its line on stderr and exit code 2."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def run_main(main):
    """Run an entry point: a UserError becomes one line on stderr and exit code 2; Ctrl-C exits 130."""
    try:
        return main()
    except UserError as error:
        fail(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        import torch.distributed as dist  # imported late: cli stays importable without torch for --help speed
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def parse_with_given(parser, argv=None):
    """Parse argv; also return the names (dests) the command line set explicitly, which --resume needs to tell an
    option the user changed from one left at its default."""
    options = parser.parse_args(argv)
    defaults = {action.dest: action.default for action in parser._actions}
    parser_defaults, parser._defaults = parser._defaults, {}  # set_defaults() values apply even to suppressed actions
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        given = set(vars(parser.parse_args(argv)))
    finally:
        parser._defaults = parser_defaults
        for action in parser._actions:
            action.default = defaults[action.dest]
    return options, given
