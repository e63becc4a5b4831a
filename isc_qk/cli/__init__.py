"""Command-line entry point: thin Typer commands that parse, call one function, print.

Each area has its own module (`evaluate`, `augment`, `gist`, `train`, `pipeline`,
`normalize`) that registers its commands on the Typer `app` (`app`); `common` holds what they
share. `main` turns user errors into one line on stderr and a non-zero exit, never a
traceback, and says how to resume after Ctrl-C.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) buries the output users need.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# ...and its Python-side retracing notes: each stage builds its tf.function once per model.
logging.getLogger("tensorflow").setLevel(logging.ERROR)

import typer  # noqa: E402

from ..errors import UserError, os_error_line
from .app import app
from . import evaluate, augment, gist, train, pipeline, normalize  # noqa: F401,E402  (registration)

try:  # Typer >= 0.20 vendors click as typer._click; older Typer uses click itself.
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx  # type: ignore[no-redef]

_NO_ARGS = getattr(_cx, "NoArgsIsHelpError", ())  # Click >= 8.2

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BUG = 1
INTERRUPTED = "interrupted: finished work is kept; run the same command again to resume"


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Whenever TensorFlow is first imported (inside a stage, only if it is needed), run its
    import with file descriptor 2 pointed at /dev/null.

    TensorFlow 2.2x prints its CUDA probes and oneDNN notes through absl's C++ logging at import
    time, which TF_CPP_MIN_LOG_LEVEL no longer silences; users need the progress and errors
    only. Importing lazily also keeps a command that stops at a bad input fast.
    """

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            try:
                sys.stderr.flush()
                os.dup2(devnull, 2)
                run(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                os.close(devnull)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _quiet_tensorflow() -> None:
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 2 with a one-line message on bad input, 130 on Ctrl-C.

    A user's input can only cause `UserError` (and OSErrors such as a full disk); anything
    else is a bug, shown with its traceback and a line asking to report it.
    """
    from ..ui import console

    args = sys.argv[1:] if argv is None else argv
    _quiet_tensorflow()

    try:
        rv = app(args=argv, standalone_mode=False, prog_name="isc-qk")
    except UserError as e:
        console.print(f"[bold red]error:[/] {' '.join(str(e).splitlines())}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except typer.Exit as e:  # Typer turns Ctrl-C into Exit(130)
        if e.exit_code == EXIT_INTERRUPTED:
            console.print(INTERRUPTED)
        sys.exit(e.exit_code)
    except _NO_ARGS:  # `isc-qk` alone: the help was printed, nothing went wrong
        sys.exit(0)
    except _cx.ClickException as e:  # usage errors: one line too, with where to look
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "isc-qk"
        msg = " ".join(e.format_message().split()) or "invalid command line"
        console.print(f"[bold red]error:[/] {msg} (see {where} --help)", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR if e.exit_code not in (0, 1) else e.exit_code)
    except (typer.Abort, KeyboardInterrupt) as e:
        if isinstance(e.__context__, EOFError) and not isinstance(e, KeyboardInterrupt):
            # Click turns ANY EOFError into Abort ("interrupted"); here it was a file that ended early
            console.print(f"[bold red]error:[/] an input file ended unexpectedly (truncated?): {e.__context__}",
                          highlight=False, soft_wrap=True)
            sys.exit(EXIT_USER_ERROR)
        console.print(INTERRUPTED)
        sys.exit(EXIT_INTERRUPTED)
    except (OSError, MemoryError) as e:  # the system refused: disk full, permissions changed mid-run, ...
        advice = "; use smaller batches or shards (--batch, --shard)" if isinstance(e, MemoryError) else ""
        console.print(f"[bold red]error:[/] {os_error_line(e)}{advice}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except Exception:
        import traceback

        traceback.print_exc()
        console.print("[bold red]internal error:[/] this is a bug in isc-qk; please report it with the command "
                      "line and the traceback above", highlight=False)
        sys.exit(EXIT_BUG)
    if rv == EXIT_INTERRUPTED:  # Typer turns Ctrl-C into a return value of 130 outside standalone mode
        console.print(INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)
