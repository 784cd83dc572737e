"""The console scripts ``mixcl-dehaze``, ``mixcl-train`` and ``mixcl-test``: argument checks before the heavy imports.

Importing :mod:`mixcl_arch` registers everything in BasicSR's registries, which imports torch and basicsr (seconds).
These fronts answer ``--help`` and argument errors first, then hand over to the command:

- ``mixcl_arch.{train,test}.main`` check the command line with :func:`check_basicsr_args`, a copy of the parser of
  BasicSR 1.4.2's ``parse_options`` (this module imports only the standard library), before they register the
  plugin; BasicSR then parses the same command line again, unchanged.
- :func:`cli_dehaze` parses with :func:`mixcl_arch.dehaze_args.parse_args` before it registers the plugin.

The package is imported while :data:`deferring` is set: ``mixcl_arch/__init__.py`` then leaves the registration to
the command, which calls :func:`mixcl_arch.register` once its arguments are parsed.

``python -m mixcl_arch.{dehaze,train,test}`` and ``python mixcl_arch/{train,test}.py`` take the same paths (see
``mixcl_arch/__init__.py`` for ``-m``).
"""
import argparse
import importlib

LAUNCHERS = ('none', 'pytorch', 'slurm')

#: True while a front imports the package before parsing its arguments (read by ``mixcl_arch/__init__.py``).
deferring = False


def basicsr_parser(prog=None):
    """The argument parser of BasicSR 1.4.2's ``basicsr.utils.options.parse_options``, option for option.

    One addition, hidden from the help: ``--local-rank``, the spelling of current torch launchers, which
    :func:`mixcl_arch.utils.basicsr_fixes.normalize_argv` rewrites to ``--local_rank`` before BasicSR parses.

    Args:
        prog (str | None): Program name in the usage line; None: ``sys.argv[0]``'s base name, as BasicSR.

    Returns:
        argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument('-opt', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=list(LAUNCHERS), default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--local_rank', type=int, default=0)
    parser.add_argument('--local-rank', type=int, dest='local_rank', help=argparse.SUPPRESS)
    parser.add_argument(
        '--force_yml', nargs='+', default=None, help='Force to update yml files. Examples: train:ema_decay=0.999')
    return parser


def check_basicsr_args(argv=None):
    """Parse a train/test command line as BasicSR will: ``--help`` exits 0 and a bad argument exits 2, here.

    Args:
        argv (list[str] | None): Arguments without the program name; None: ``sys.argv[1:]``.

    Returns:
        argparse.Namespace: The parsed arguments (BasicSR parses ``sys.argv`` again itself).
    """
    return basicsr_parser().parse_args(argv)


def _import_deferred(name):
    """Import ``name`` (a module of mixcl_arch) without the package's registration, see :data:`deferring`."""
    global deferring
    deferring = True
    try:
        return importlib.import_module(name)
    finally:
        deferring = False


def run_basicsr(kind, root_path=None):
    """BasicSR's ``train_pipeline`` / ``test_pipeline`` with every fix (the body of ``mixcl_arch/{train,test}.py``).

    The command line is checked first (:func:`check_basicsr_args`): ``--help`` and argument errors are answered
    before torch and basicsr are imported. Then the plugin registers and BasicSR parses the command line again.

    Args:
        kind (str): 'train' or 'test'.
        root_path (str | None): Where ``experiments/`` / ``results/`` go; default: the working directory.
    """
    check_basicsr_args()
    _import_deferred('mixcl_arch').register()
    from mixcl_arch.utils.basicsr_fixes import run_pipeline
    run_pipeline(kind, root_path)


def cli_train():
    """``mixcl-train``: BasicSR's train_pipeline with every fix."""
    run_basicsr('train')


def cli_test():
    """``mixcl-test``: BasicSR's test_pipeline with every fix."""
    run_basicsr('test')


def cli_dehaze(argv=None):
    """``mixcl-dehaze`` and ``python -m mixcl_arch.dehaze``: parse, register the plugin, run the CLI.

    Args:
        argv (list[str] | None): Arguments without the program name; None: ``sys.argv[1:]``.

    Returns:
        int: The exit status of :func:`mixcl_arch.dehaze.main` (which parses ``argv`` again).
    """
    _import_deferred('mixcl_arch.dehaze_args').parse_args(argv)
    import mixcl_arch
    mixcl_arch.register()
    from mixcl_arch.dehaze import main
    return main(argv)
