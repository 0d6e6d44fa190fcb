"""The CLI's plumbing: every failure as one `error:` line and exit code 2, progress bars on stderr
(--quiet), one JSON object on stdout. cli.py wires commands; this module says how they fail and print.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time

import click
from tqdm import tqdm

from .distributed import env_rank
from .errors import Interrupted, LtmError, os_failure


class LtmGroup(click.Group):
    """Turns click's usage errors and LtmError into one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `ltm`: the help, not an error
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.ClickException as exc:
            if env_rank() == 0:
                click.echo(f"error: {exc.format_message()}", err=True)
            else:
                _let_rank_zero_speak()
            sys.exit(2)
        except Interrupted as exc:  # a checkpoint was committed; the message says how to resume
            if env_rank() == 0:
                click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)
        except LtmError as exc:
            if env_rank() == 0:  # every worker refuses alike; the first one says why
                click.echo(f"error: {exc}", err=True)
            else:
                _let_rank_zero_speak()
            sys.exit(2)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:  # a full disk, a read-only or vanished folder, an I/O error: one line
            if env_rank() == 0:
                click.echo(f"error: {os_failure(exc)}", err=True)
            sys.exit(2)
        except MemoryError:
            if env_rank() == 0:
                click.echo("error: out of memory: ask for less (a smaller --batch-size, --samples, --chains, "
                           "--num or model)", err=True)
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)


def _let_rank_zero_speak(seconds: float = 5.0) -> None:
    """A silent worker that refuses first would have torchrun stop the group before rank 0 prints
    why: wait for rank 0 to speak and exit (torchrun then ends this worker)."""
    time.sleep(seconds)


def set_quiet(ctx, param, value):
    """The --quiet option's callback."""
    ctx.meta["ltm.quiet"] = value


def quiet() -> bool:
    return click.get_current_context().meta.get("ltm.quiet", False)


def progress_bar(desc: str, unit: str):
    """A progress factory for the library, on stderr unless --quiet: entered with the total once
    every check has passed."""
    disable = quiet() or env_rank() != 0  # one progress bar across workers

    @contextlib.contextmanager
    def factory(total: int):
        with tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True) as bar:
            yield bar.update

    return factory


def emit_json(record) -> None:
    """One JSON object on stdout: a result record's to_dict(), or a summary dict."""
    click.echo(json.dumps(record.to_dict() if hasattr(record, "to_dict") else record))


def show(record, as_json: bool, view) -> None:
    """A command's result: the record's JSON object with --json, else its text view(record)."""
    if as_json:
        emit_json(record)
    else:
        click.echo(view(record))
