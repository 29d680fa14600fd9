"""PID 1 of the PID namespace the Test::Nginx suites run in: runs the
command given, reaps every process that ends up its child (the suites'
nginx daemonizes, and a worker's host outlives it briefly), and exits with
the command's status. Before it exits, and so takes the namespace down, it
lets what is still ending end, for a few seconds at most: a host removes
its directory 200 ms after its nginx stopped."""
import os
import signal
import sys

DRAIN_SECONDS = 5


def main():
    child = os.fork()
    if child == 0:
        os.execvp(sys.argv[1], sys.argv[1:])
    code = None
    while code is None:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status) % 256
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(code))
    signal.alarm(DRAIN_SECONDS)
    try:
        while True:
            os.waitpid(-1, 0)
    except ChildProcessError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    main()
