"""Run pytest and fail when it collected no test (pytest's exit code 5 would pass silently)."""

import sys

import pytest

if __name__ == "__main__":
    code = pytest.main(sys.argv[1:])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("run_pytest: no tests ran; that is a failure, not a pass", file=sys.stderr)
        sys.exit(1)
    sys.exit(int(code))
