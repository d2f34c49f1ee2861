"""``mlops deploy render|run|trigger|serving``: render and deploy jobs, trigger them, serve the Champion."""
import argparse
import json
import sys
from pathlib import Path

from mlops.cli import command
from mlops.config import parse_assignments
from mlops.errors import ConfigError
from mlops.deploy import jobspec
from mlops.deploy.auth import HOST_ENV, auth_methods
from mlops.deploy.trigger import trigger
from mlops.deploy.workspace import NUTTER_FOLDER, deploy, find_wheels


def _render_command(args):
    environment = jobspec.load_environment(args.env, args.jobs_dir)
    version = args.wheel_version or find_wheels(args.wheels_dir)[0]
    if args.release_folder:
        print(jobspec.release_folder(environment, version))
        return 0
    if not args.job_file:
        raise ConfigError("name a job file to render, or pass --release-folder")
    job = jobspec.render_job(jobspec.load_job(args.job_file), environment, wheel_version=version,
                             workspace_root=args.workspace_root)
    jobspec.validate_job_settings(job)
    if args.parameters_only:
        document = {name: value for name, value, _ in jobspec.declared_parameters(job)}
        if args.resolve_dates:
            document = {name: jobspec.resolve_start_time(value) for name, value in document.items()}
    else:
        document = job
    text = json.dumps(document, indent=None if args.parameters_only else 2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _run_command(args):
    deploy(args.env, host=args.host, profile=args.profile, wheels_dir=args.wheels_dir, jobs_dir=args.jobs_dir,
           notebooks_dir=args.notebooks_dir, tests_dir=args.tests_dir, dry_run=args.dry_run)
    return 0


def _trigger_command(args):
    trigger(args.env, args.job, parse_assignments(args.parameter), host=args.host, profile=args.profile,
            wait=args.wait,
            timeout_minutes=args.timeout_minutes, jobs_dir=args.jobs_dir)
    return 0


def _serving_command(args):
    from mlops.deploy.serving_endpoint import deploy_serving

    plan = deploy_serving(args.env, host=args.host, profile=args.profile, canary_percent=args.canary_percent,
                          rollback=args.rollback, jobs_dir=args.jobs_dir)
    print(plan.summary())
    return 0


def register_cli(subparsers):
    """Add ``mlops deploy render|run|trigger`` to the ``mlops`` command line."""
    parser = subparsers.add_parser("deploy", help="render job files, deploy to Databricks, trigger jobs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="deploy_command", required=True)

    render = commands.add_parser("render", help="print a job file rendered for an environment")
    render.add_argument("job_file", nargs="?", default="",
                        help="a job file, e.g. databricks_jobs/taxi_fares_training.json")
    render.add_argument("--env", required=True, help="environment name (a file in <jobs-dir>/environments/)")
    render.add_argument("--wheel-version", help="the wheel version the job installs; default: the version "
                                                "of the wheels in --wheels-dir, as `deploy run` does")
    render.add_argument("--wheels-dir", default="dist", help="read the wheel version from the wheels here")
    render.add_argument("--release-folder", action="store_true",
                        help="print only the workspace folder the release's notebooks are deployed to")
    render.add_argument("--resolve-dates", action="store_true",
                        help="with --parameters-only: resolve {{job.start_time.*}} to now, as a run would")
    render.add_argument("--workspace-root", help="override the environment's workspace_root")
    render.add_argument("--jobs-dir", default=jobspec.DEFAULT_JOBS_DIR)
    render.add_argument("--parameters-only", action="store_true",
                        help="print only the job's parameters as one JSON object of name -> value")
    render.add_argument("--output", help="write to this file instead of standard output")
    render.set_defaults(func=command(_render_command))

    run = commands.add_parser("run", help="upload wheels, import notebooks, create or reset jobs")
    _add_connection_arguments(run)
    run.add_argument("--wheels-dir", default="dist")
    run.add_argument("--jobs-dir", default=jobspec.DEFAULT_JOBS_DIR)
    run.add_argument("--notebooks-dir", default="orchestrator")
    run.add_argument("--tests-dir", help=f"also import these Nutter test notebooks to "
                                         f"<release folder>/{NUTTER_FOLDER}/")
    run.add_argument("--dry-run", action="store_true",
                     help="print every API call the deploy would make, and make none (no workspace needed)")
    run.set_defaults(func=command(_run_command))

    start = commands.add_parser("trigger", help="run a deployed job now")
    _add_connection_arguments(start)
    start.add_argument("--job", required=True, help="job name, e.g. taxi_fares_training")
    start.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                       help="parameter override; repeat for more")
    start.add_argument("--wait", action="store_true", help="wait for the run and fail unless it succeeds")
    start.add_argument("--timeout-minutes", type=int, default=120)
    start.add_argument("--jobs-dir", default=jobspec.DEFAULT_JOBS_DIR)
    start.set_defaults(func=command(_trigger_command))

    serving = commands.add_parser("serving",
                                  help="create or update the Model Serving endpoint of the Champion")
    _add_connection_arguments(serving)
    serving.add_argument("--canary-percent", type=int, default=0,
                         help="also serve the Challenger and send it this share of the traffic (0-50)")
    serving.add_argument("--rollback", action="store_true",
                         help="serve the Champion the endpoint served before its last deploy")
    serving.add_argument("--jobs-dir", default=jobspec.DEFAULT_JOBS_DIR)
    serving.set_defaults(func=command(_serving_command))


def _add_connection_arguments(parser):
    parser.add_argument("--env", required=True,
                        help="environment name (a file in databricks_jobs/environments/)")
    parser.add_argument("--host", help=f"workspace URL; default ${HOST_ENV} or the profile's host")
    parser.add_argument("--profile", help="a ~/.databrickscfg profile (default $DATABRICKS_CONFIG_PROFILE)")
    parser.epilog = ("Credentials are never options: databricks-sdk unified auth finds them. Ways: "
                     + auth_methods() + ".")
