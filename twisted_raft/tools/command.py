"""
What the tools' command lines share: options whose usage line is their
C{synopsis}, and parsing that reports a usage error on stderr.
"""

import sys

from twisted.python import usage


class ToolOptions(usage.Options):
    """Options whose C{getSynopsis} is C{"Usage: "} and the class's C{synopsis}."""

    def getSynopsis(self):
        return "Usage: " + self.synopsis


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
