"""``mlops bundle check``: the local checks of the bundle that ``databricks bundle validate`` lacks."""
from pathlib import Path

from mlops.cli import command
from mlops.errors import ConfigError


def _check_command(args) -> int:
    from mlops.deploy.bundle_check import check_bundle
    from mlops.local.bundle import find_root, load_bundle

    root = find_root(Path(args.root) if args.root else None)
    problems = check_bundle(root, [args.target] if args.target else None)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        raise ConfigError(f"the bundle in {root} has {len(problems)} problem(s); see above")
    bundle = load_bundle(root, args.target)
    resources = bundle.config.get("resources", {})
    counts = ", ".join(f"{len(entries)} {kind}" for kind, entries in resources.items() if entries)
    print(f"bundle {bundle.config['bundle']['name']} in {root}: no problems "
          f"({'target ' + args.target if args.target else 'every target'}; {counts})")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("bundle", help="check the Databricks bundle (databricks.yml) locally",
                                   description=__doc__)
    commands = parser.add_subparsers(dest="bundle_command", required=True)
    check = commands.add_parser("check", help="variables, references, paths and job parameters, per target")
    check.add_argument("-t", "--target", help="check this target only (default: every target)")
    check.add_argument("--root", help="the bundle's folder (default: the nearest databricks.yml upwards)")
    check.set_defaults(func=command(_check_command))
