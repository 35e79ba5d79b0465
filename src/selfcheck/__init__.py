"""selfcheck.py: this machine's versions and devices, what each job runs here and why, and real checks of each
accelerated path against its reference (src/selfcheck/report.py, src/selfcheck/checks.py)."""
from src.selfcheck.checks import REFERENCE_FVD, Check
from src.selfcheck.run import format_report, run_selfcheck
