"""redis-cli in a terminal (a pty) against a ringkv RESP port: types
`set `, `lpush ` and `gete<TAB>` and prints what the terminal shows after
each, one line per step, for tests/resp.rs. redis-cli 7 takes its hints and
completions from the server's COMMAND DOCS; for a command the server does
not document (ringkv has no LPUSH) it shows no hint.

Usage: resp_hints.py PORT
"""

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time


def main():
    port = sys.argv[1]
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execvp("redis-cli", ["redis-cli", "-p", port])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    shown = b""

    def read_until(needle, timeout=20.0):
        """What the terminal shows until `needle` (or the timeout)."""
        nonlocal shown
        start = len(shown)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                if needle in shown[start:]:
                    return shown[start:]
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            shown += chunk
            # linenoise asks where the cursor is.
            if b"\x1b[6n" in chunk:
                os.write(fd, b"\x1b[1;1R")
        return shown[start:]

    read_until(b"> ")
    for keys, needle in ((b"set ", b"set "), (b"\x15lpush ", b"lpush "), (b"\x15gete\t", b"GETEX")):
        os.write(fd, keys)
        out = read_until(needle)
        # The last redraw of the line: after the last clear-line sequence.
        line = out.split(b"\x1b[0K")[-1]
        print(repr(line.decode("utf-8", "replace")), flush=True)
    os.kill(pid, 9)
    os.waitpid(pid, 0)


main()
