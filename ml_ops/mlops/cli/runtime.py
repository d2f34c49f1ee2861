"""``notebook run`` and ``job run`` subcommands of the ``mlops`` command line."""
import argparse
import sys
from pathlib import Path

from mlops.cli import command
from mlops.config import parse_assignments
from mlops.errors import JobError
from mlops.local.job_file import bundle_job, load_job
from mlops.local.jobs import SUCCESS, RunRecord, run_job, run_notebook_as_job


def register_cli(subparsers) -> None:
    """Add ``notebook run`` and ``job run`` to an argparse subparsers object."""
    notebook = subparsers.add_parser("notebook", help="run Databricks source notebooks locally")
    notebook_commands = notebook.add_subparsers(dest="notebook_command", required=True)
    notebook_run = notebook_commands.add_parser(
        "run", help="run one notebook with widget values, as a one-task run with a run id and record")
    notebook_run.add_argument("path", help="the notebook's .py file")
    _add_parameter_option(notebook_run, "widget value")
    notebook_run.set_defaults(func=command(run_notebook_command))

    job = subparsers.add_parser("job", help="run the bundle's jobs locally")
    job_commands = job.add_subparsers(dest="job_command", required=True)
    job_run = job_commands.add_parser("run", help="run every task of a job in dependency order")
    job_run.add_argument("job", help="a job of the bundle (databricks.yml here or above), e.g. "
                                     "taxi_fares_training; or a JSON job settings file")
    job_run.add_argument("-t", "--target", help="the bundle target whose values apply (default: the "
                                                "bundle's default target)")
    job_run.add_argument("--var", dest="variables", action="append", default=[], metavar="NAME=VALUE",
                         help="a bundle variable's value, as `databricks bundle --var`; repeat for several")
    _add_parameter_option(job_run, "job or task parameter override")
    job_run.add_argument("--repair", metavar="RUN_ID", dest="repair_run_id",
                         help="re-run the failed and skipped tasks of an earlier run, in that run; "
                              "-p values override the parameters the run recorded")
    job_run.add_argument("--if-busy", choices=("fail", "wait"), default="fail",
                         help="when the job already has max_concurrent_runs runs in progress: fail at once "
                              "(default) or wait for a slot")
    job_run.set_defaults(func=command(run_job_command))

    runs = subparsers.add_parser("runs", help="look at local job runs")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_commands.add_parser("list", help="recent runs, newest first")
    runs_list.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    runs_list.set_defaults(func=command(list_runs_command))
    runs_show = runs_commands.add_parser("show", help="one run: its tasks, what they decided, its repairs")
    runs_show.add_argument("run_id")
    runs_show.set_defaults(func=command(show_run_command))


def _add_parameter_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-p", "--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                        help=f"{what}; repeat for several")


def run_notebook_command(args: argparse.Namespace) -> int:
    """Run one notebook as a recorded one-task run; print its exit value, or its error and traceback."""
    record = run_notebook_as_job(Path(args.path), parse_assignments(args.params))
    (entry,) = record.tasks.values()
    if record.state != SUCCESS:
        print(f"error: {entry.get('error', 'the notebook failed')}", file=sys.stderr)
        traceback_file = Path(entry.get("output_dir", "")) / "error.txt"
        if traceback_file.is_file():
            sys.stderr.write(traceback_file.read_text(encoding="utf-8"))
        return 1
    exit_value = entry.get("exit_value")
    print(f"exit value: {exit_value}" if exit_value is not None else "notebook finished")
    return 0


def run_job_command(args: argparse.Namespace) -> int:
    """Run or repair a job; 0 when every task succeeded, 1 otherwise."""
    if args.job.endswith(".json"):
        if args.target or args.variables:
            raise JobError(f"{args.job} is a job file: --target and --var apply to the bundle's jobs only")
        job = load_job(Path(args.job))
    else:
        job = bundle_job(args.job, args.target, variables=parse_assignments(args.variables))
    record = run_job(job, parse_assignments(args.params), repair_run_id=args.repair_run_id,
                     if_busy=args.if_busy)
    return 0 if record.state == SUCCESS else 1


def list_runs_command(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise JobError(f"--limit must be at least 1, got {args.limit}")
    records = RunRecord.recent(args.limit)
    if not records:
        print("no runs yet: start one with `mlops job run taxi_fares_training --target dev`")
        return 0
    rows = [[record.run_id, record.job_name, record.state, record.start_time[:19].replace("T", " "),
             str(len(record.repairs))] for record in records]
    from mlops.lifecycle.model_admin import format_table

    print(format_table(["run id", "job", "state", "started (UTC)", "repairs"], rows))
    return 0


def show_run_command(args: argparse.Namespace) -> int:
    record = RunRecord.load(args.run_id)
    print(f"run {record.run_id} of job '{record.job_name}': {record.state}")
    print(f"started {record.start_time}, ended {record.end_time or '-'}; record {record.path}")
    print("tasks:")
    for line in record.summary():
        print(line)
    for repair in record.repairs:
        print(f"repair {repair['repair_id']}: {repair['state']}, tasks {', '.join(repair['tasks'])}, "
              f"started {repair['start_time']}")
    return 0
