"""
What the tools' command lines share: options whose usage line is their
C{synopsis}, flags that may follow arguments, and parsing that reports a
usage error on stderr.
"""

import getopt
import sys

from twisted.python import usage


class VersionOption:
    """C{--version} prints raftkv's version (Twisted's would print Twisted's)."""

    def opt_version(self):
        """Print raftkv's version and exit."""
        from twisted_raft import __version__

        print(f"raftkv {__version__}")
        sys.exit(0)


class ToolOptions(VersionOption, usage.Options):
    """Options whose C{getSynopsis} is C{"Usage: "} and the class's C{synopsis}."""

    def getSynopsis(self):
        return "Usage: " + self.synopsis


class InterspersedOptions(ToolOptions):
    """
    Options whose flags may come after their arguments (C{raftkv get KEY
    --stale}, C{raftkv certs DIR --nodes 3}), GNU style.  C{--} ends the
    options.
    """

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        # Let Twisted's shell-completion hook see the original arguments.
        if len(options) > 1 and options[-2] == "--_shell-completion":
            return super().parseOptions(options)
        # Collect the option names Twisted's getopt would use (the lists are
        # built lazily by parseOptions, so build them the same way here).
        shortOpt = self.shortOpt
        longOpt = self.longOpt
        try:
            opts, args = getopt.gnu_getopt(options, shortOpt, longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e))
        reordered = []
        for opt, arg in opts:
            name = opt.lstrip("-")
            if opt.startswith("--"):
                reordered.append(f"{opt}={arg}" if arg or name + "=" in longOpt else opt)
            else:
                reordered.extend([opt, arg] if arg or name + ":" in shortOpt else [opt])
        return super().parseOptions(reordered + ["--"] + args)


def parseOptions(options, argv=None):
    """
    Parse C{argv} (default: the process's arguments) into C{options}.

    @return: C{options}, or C{None} after writing the synopsis and the
        error to stderr (the caller exits with its usage status).
    """
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{options.getSynopsis()}\n\nerror: {e}", file=sys.stderr)
        return None
    return options
