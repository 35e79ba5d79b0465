"""The whole self-check: the environment report, then the checks, as one dict and as readable text."""
from __future__ import annotations

import time

from src.selfcheck.checks import Check, check_decoding, failed, fast_path_checks, fvd_check, tvl1_checks
from src.selfcheck.report import environment


def run_selfcheck(full: bool = False) -> dict:
    """The report and every check (the slower ones with `full`); 'ok' is False when any check failed."""
    start = time.perf_counter()
    report = environment()
    checks: list[Check] = [check_decoding()]
    for name, step in (("tvl1", lambda: tvl1_checks(report["devices"], full)),
                       ("fast path", lambda: fast_path_checks(report["devices"])),
                       ("fvd", lambda: fvd_check(report["devices"], full))):
        try:
            checks += step()
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            checks.append(failed(name, exc))
    report.update(full=full, checks=[c.as_dict() for c in checks], ok=all(c.status != "FAIL" for c in checks),
                  seconds=round(time.perf_counter() - start, 1))
    return report


def format_report(report: dict) -> str:
    """The report as text: versions, devices, the jobs' choices, the cached verdicts, one line per check."""
    v = report["versions"]
    lines = [f"python {v['python']} ({v['platform']}); torch {v['torch']}; CUDA {v['cuda']}; cuDNN {v['cudnn']}; "
             f"triton {v['triton']}; numpy {v['numpy']}",
             f"OpenCV {v['opencv']} (optflow: {'yes' if v['opencv_contrib_optflow'] else 'no'}; FFmpeg: "
             f"{v['opencv_ffmpeg']}); PyAV {v['pyav'] or 'not installed'}", "", "devices:"]
    for d in report["devices"]:
        extra = {k: d[k] for k in d if k not in ("device", "name", "flags")}
        lines.append(f"  {d['device']}: {d['name']}; " + ", ".join(f"{k} {val}" for k, val in extra.items()))
    lines += ["", "what the jobs run here:"]
    lines += [f"  {row['job']}: {row['runs']} ({row['why']})" for row in report["plan"]]
    verdicts = report["guard"]["verdicts"]
    lines += ["", f"cached guard verdicts ({report['guard']['file']}):" + ("" if verdicts else " none yet")]
    lines += [f"  {key}: {'ok' if e['ok'] else 'FAILED'} ({e['detail']})" for key, e in verdicts.items()]
    lines += ["", "checks:"]
    lines += [Check(**c).line() for c in report["checks"]]
    failures = sum(c["status"] == "FAIL" for c in report["checks"])
    lines += ["", f"{'all checks passed' if not failures else f'{failures} check(s) FAILED'} in {report['seconds']} s"
                  f"{'' if report['full'] else ' (--full adds the slower checks)'}; attach `python selfcheck.py "
                  f"--json` to a bug report"]
    return "\n".join(lines)
