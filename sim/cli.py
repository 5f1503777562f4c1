"""``kfrouter sim gen | run | tune | staff | erlang``: make a synthetic trace, replay a trace under
policies, search settings for a target (sim/tune.py), staff the hours of the day (sim/staff.py), print the
Erlang closed forms. Bad input exits 2 with a message naming the option, or the file and line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kfrouter.sim.gen import SERVICE_DISTS, GenError, GenParams, parse_priorities, parse_shares, parse_windows

EXIT_USAGE = 2
EXIT_FAILED = 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sim", help="offline simulator: generate traces, replay them under policies")
    simsub = p.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")
    p.set_defaults(func=lambda _a: (p.print_help(sys.stderr), EXIT_USAGE)[1])

    g = simsub.add_parser("gen", help="write a synthetic trace (JSON Lines, version 1)")
    g.add_argument("--agents", type=int, default=10, help="number of agents (default 10)")
    g.add_argument("--max-sessions", type=int, default=1, help="sessions per agent at once (default 1)")
    g.add_argument("--customers", type=int, default=1000, help="number of arrivals (default 1000)")
    g.add_argument("--arrival-rate", type=float, default=None, help="arrivals per second (default 0.1)")
    g.add_argument(
        "--arrival-profile",
        default=None,
        metavar="SPEC",
        help="daily rate profile 'H1-H2:RATE,...' in hours and arrivals per second, e.g. "
        "'0-8:0.02,8-12:0.3,12-18:0.2,18-24:0.05' (hours not covered have rate 0)",
    )
    g.add_argument("--service-mean", type=float, default=60.0, help="mean service time in s (default 60)")
    g.add_argument("--service-dist", choices=SERVICE_DISTS, default="exp", help="service distribution")
    g.add_argument("--service-cv", type=float, default=1.0, help="coefficient of variation (lognormal)")
    g.add_argument(
        "--patience-mean",
        type=float,
        default=None,
        help="mean patience in s (exponential; default: nobody leaves)",
    )
    g.add_argument(
        "--groups",
        default=None,
        metavar="SPEC",
        help="'sales:0.7,support:0.3': arrival shares; agents are split across the groups in the same shares",
    )
    g.add_argument(
        "--priorities",
        default=None,
        metavar="SPEC",
        help="'1:0.1,2:0.01': shares of arrivals with these priorities (the rest 0)",
    )
    g.add_argument(
        "--returning", type=float, default=0.0, help="share of arrivals that are returning customers"
    )
    g.add_argument(
        "--return-gap",
        type=float,
        default=3600.0,
        help="a customer returns no sooner than this "
        "many seconds after their previous arrival (default 3600)",
    )
    g.add_argument("--preferred", type=float, default=0.0, help="share of arrivals naming a preferred agent")
    g.add_argument(
        "--shifts",
        default=None,
        metavar="SPEC",
        help="daily shifts 'H1-H2[:SHARE],...', e.g. "
        "'8-16,12-20,20-8:0.5'; agents of each group are split across the shifts by share",
    )
    g.add_argument(
        "--cross-skill",
        type=float,
        default=1.0,
        metavar="P",
        help="every agent's proficiency for the groups other than its own, 0 < P <= 1: a session lasts "
        "service_s / P (default 1: who serves does not matter)",
    )
    g.add_argument(
        "--same-agent-factor",
        type=float,
        default=1.0,
        metavar="F",
        help="a returning customer served by their previous agent needs F x service_s (default 1)",
    )
    g.add_argument(
        "--recontact",
        type=float,
        default=0.0,
        metavar="R",
        help="share of sessions with a fully proficient agent that do not resolve, 0 <= R <= 1; with "
        "proficiency p the share is min(1, R/p) and the customer comes back later (default 0: off)",
    )
    g.add_argument(
        "--recontact-gap",
        type=float,
        default=1800.0,
        metavar="S",
        help="mean seconds before an unresolved customer comes back (exponential; default 1800)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--name", default="synthetic", help="trace name in the header")
    g.add_argument("--out", default="-", help="output file ('-' = stdout; '.gz' = compressed)")
    g.set_defaults(func=_gen)

    r = simsub.add_parser("run", help="replay a trace under one or more policies and report")
    r.add_argument("trace", help="trace file (JSON Lines; .gz accepted)")
    r.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="NAME",
        help="policy to run, NAME or NAME(key=value,...) e.g. 'best-fit(unlisted_skill=0.9)' "
        "(repeat; default: every installed policy)",
    )
    r.add_argument(
        "--no-baseline",
        action="store_true",
        help="do not add the wechat-native baseline when it is not among --policy",
    )
    r.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    r.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots into DIR (needs matplotlib)")
    r.add_argument("--seed", type=int, default=None, help="seed for injected failures (default: the trace's)")
    r.add_argument(
        "--overflow-after",
        type=float,
        default=60.0,
        help="seconds before a customer may go to another group's agents (default 60)",
    )
    r.add_argument("--no-overflow", action="store_true", help="customers stay with their own group")
    r.add_argument("--default-capacity", type=int, default=3)
    r.add_argument("--reservation-timeout", type=float, default=30.0)
    r.add_argument(
        "--preferred-wait",
        type=float,
        default=120.0,
        help="seconds a customer waits for the agent they named (default 120)",
    )
    r.add_argument(
        "--on-agent-offline",
        choices=("keep", "reassign"),
        default="keep",
        help="an offline agent's open sessions: kept until they end (default) or moved",
    )
    r.add_argument(
        "--offline-grace",
        type=float,
        default=120.0,
        help="seconds before an offline agent's sessions are moved (with reassign)",
    )
    r.add_argument(
        "--stale-session",
        type=float,
        default=None,
        help="the engine closes sessions open longer than this many seconds",
    )
    r.add_argument("--create-latency", type=float, default=0.0, help="seconds before a create is answered")
    r.add_argument("--create-failure-rate", type=float, default=0.0, help="share of creates that fail")
    r.add_argument("--create-failure-errcode", type=int, default=-1, help="errcode of injected failures")
    r.add_argument(
        "--eta",
        action="store_true",
        help="score the wait estimates customers would be given (eta_* columns; about 2x slower)",
    )
    r.add_argument(
        "--notify",
        action="store_true",
        help="plan the texts to waiting customers as the daemon does (messages_sent, "
        "messages_per_customer_max, notify_budget_violations columns)",
    )
    r.add_argument(
        "--jobs",
        type=_count,
        default=None,
        metavar="N",
        help="run up to N simulations at once in worker processes (default: the number of cores)",
    )
    r.add_argument(
        "--replications",
        type=_count,
        default=1,
        metavar="K",
        help="K replications (seeds) of every policy: means with 95%% confidence intervals "
        "(<metric>_ci95); see docs/simulator.md for what a replication of a trace file is",
    )
    r.set_defaults(func=_run)

    t = simsub.add_parser("tune", help="search routing settings on a trace for the best one meeting a target")
    t.add_argument("trace", help="trace file (JSON Lines; .gz accepted)")
    t.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="EXPR",
        help="METRIC OP NUMBER, e.g. 'wait_p90_s<=60' (repeat: all must hold)",
    )
    t.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="NAME=LO..HI[:STEP]",
        help="a setting to search: overflow_after, preferred_wait, reservation_timeout (seconds), "
        "policy=a,b or POLICY.OPTION (e.g. best-fit.unlisted_skill=0.5..1:0.1); values LO..HI[:STEP] or a,b,c",
    )
    t.add_argument("--policy", default="best-fit", help="the policy when 'policy' is not varied (best-fit)")
    goal = t.add_mutually_exclusive_group()
    goal.add_argument(
        "--minimize", metavar="METRIC", default=None, help="best = lowest (default wait_mean_s)"
    )
    goal.add_argument("--maximize", metavar="METRIC", default=None, help="best = highest")
    t.add_argument("--jobs", type=int, default=None, help="worker processes (default: the cores)")
    t.add_argument("--seed", type=int, default=None, help="seed for injected failures (default: the trace's)")
    t.add_argument("--overflow-after", type=float, default=60.0, help="when not varied (default 60)")
    t.add_argument("--preferred-wait", type=float, default=120.0, help="when not varied (default 120)")
    t.add_argument("--reservation-timeout", type=float, default=30.0, help="when not varied (default 30)")
    t.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    t.set_defaults(func=_tune)

    st = simsub.add_parser("staff", help="agents needed per hour of the day for a target, from a trace")
    st.add_argument("trace", help="trace file: its arrivals are staffed (its own agent lines are ignored)")
    st.add_argument(
        "--target",
        required=True,
        metavar="EXPR",
        help="service_level_<N>s>=X (e.g. service_level_20s>=0.8) or abandon_rate<=X",
    )
    st.add_argument("--policy", default="best-fit", help="policy of the checking replays (default best-fit)")
    st.add_argument(
        "--max-sessions", type=int, default=None, help="sessions per agent (default: the trace's)"
    )
    st.add_argument(
        "--patience-mean", type=float, default=None, help="mean patience in s (default: from the trace)"
    )
    st.add_argument("--max-rounds", type=int, default=12, help="replays at most (default 12)")
    st.add_argument("--overflow-after", type=float, default=60.0, help="engine setting of the replays")
    st.add_argument("--seed", type=int, default=None, help="replay seed (default: the trace's)")
    st.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    st.add_argument("--plot", default=None, metavar="PNG", help="write the chart here (needs matplotlib)")
    st.set_defaults(func=_staff)

    e = simsub.add_parser("erlang", help="Erlang C (M/M/c) and, with --patience-mean, Erlang A (M/M/c+M)")
    e.add_argument("--agents", type=int, required=True, help="servers c")
    e.add_argument("--arrival-rate", type=float, required=True, help="arrivals per second")
    e.add_argument("--service-mean", type=float, required=True, help="mean service time in s")
    e.add_argument("--patience-mean", type=float, default=None, help="mean patience in s")
    e.set_defaults(func=_erlang)


def _count(text: str) -> int:
    """An argument that counts something: an integer >= 1 (argparse names the option and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _fail(cmd: str, msg: str, code: int = EXIT_USAGE) -> int:
    print(f"kfrouter sim {cmd}: error: {msg}", file=sys.stderr)
    return code


def gen_params(args: argparse.Namespace) -> GenParams:
    """GenParams from parsed ``sim gen`` arguments (GenError on a bad spec)."""
    if args.arrival_rate is not None and args.arrival_profile is not None:
        raise GenError("give --arrival-rate or --arrival-profile, not both")
    return GenParams(
        agents=args.agents,
        max_sessions=args.max_sessions,
        customers=args.customers,
        arrival_rate=0.1 if args.arrival_rate is None else args.arrival_rate,
        arrival_profile=(
            parse_windows(args.arrival_profile, "--arrival-profile", wrap=False, default=None)
            if args.arrival_profile
            else ()
        ),
        service_mean=args.service_mean,
        service_dist=args.service_dist,
        service_cv=args.service_cv,
        patience_mean=args.patience_mean,
        groups=parse_shares(args.groups) if args.groups else (),
        priorities=parse_priorities(args.priorities) if args.priorities else (),
        returning=args.returning,
        return_gap=args.return_gap,
        preferred=args.preferred,
        shifts=parse_windows(args.shifts, "--shifts", wrap=True, default=1.0) if args.shifts else (),
        cross_skill=args.cross_skill,
        same_agent_factor=args.same_agent_factor,
        recontact=args.recontact,
        recontact_gap=args.recontact_gap,
        seed=args.seed,
        name=args.name,
    )


def _gen(args: argparse.Namespace) -> int:
    from kfrouter.sim.gen import generate, header_for
    from kfrouter.sim.trace import TraceWriter, write_trace

    try:
        params = gen_params(args)
    except GenError as exc:
        return _fail("gen", str(exc))
    if args.out == "-":
        n = TraceWriter(sys.stdout, header_for(params)).write_all(generate(params))
    else:
        try:
            n = write_trace(args.out, header_for(params), generate(params))
        except OSError as exc:
            return _fail("gen", f"cannot write {args.out}: {exc.strerror or exc}")
        print(f"wrote {n} records to {args.out}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    from kfrouter.policies.registry import available_policies, load_policy
    from kfrouter.sim.gc_policy import tune_for_replay

    tune_for_replay()  # this process replays: the program's choice (sim/gc_policy.py)
    from kfrouter.router.core.errors import ConfigError
    from kfrouter.sim import parallel
    from kfrouter.sim.plot import PlotUnavailable, require_matplotlib, write_plots
    from kfrouter.sim.progress import Progress
    from kfrouter.sim.report import BASELINE, build_replicated_report, to_json, to_text
    from kfrouter.sim.runner import RunConfig
    from kfrouter.sim.trace import TraceError, TraceReader

    if args.plot is not None and args.replications > 1:
        return _fail("run", "--plot draws one run of each policy: it cannot be combined with --replications")
    if args.plot is not None:
        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            return _fail("run", str(exc))
    installed = [n for n, _ in available_policies()]
    names: list[str] = list(dict.fromkeys(args.policy or installed))
    for n in names:
        try:
            load_policy(n)  # the name, and the options of NAME(key=value, ...)
        except ConfigError as exc:
            return _fail("run", str(exc))
    if not args.no_baseline and BASELINE not in names and BASELINE in installed:
        names.append(BASELINE)
    if not Path(args.trace).is_file():
        return _fail("run", f"{args.trace}: no such file")
    try:
        with TraceReader(args.trace) as reader:
            header = reader.header
            seed = args.seed if args.seed is not None else (header.seed or 0)
        base = RunConfig(
            policy=names[0],
            seed=seed,
            default_capacity=args.default_capacity,
            reservation_timeout_s=args.reservation_timeout,
            overflow_after_s=None if args.no_overflow else args.overflow_after,
            preferred_wait_s=args.preferred_wait,
            on_agent_offline=args.on_agent_offline,
            offline_grace_s=args.offline_grace,
            stale_session_s=args.stale_session,
            create_latency_s=args.create_latency,
            create_failure_rate=args.create_failure_rate,
            create_failure_errcode=args.create_failure_errcode,
            timeline=args.plot is not None,
            eta=args.eta,
            notify=args.notify,
        )
        jobs = parallel.plan(args.trace, header, names, base, args.replications)
    except TraceError as exc:
        return _fail("run", str(exc))
    except (ConfigError, ValueError) as exc:  # parallel.ReplicationError too
        return _fail("run", str(exc))
    workers = args.jobs if args.jobs is not None else parallel.default_jobs()
    with Progress(f"{len(jobs)} runs") as bar:
        outcomes = parallel.run_jobs(jobs, workers, progress=bar.update)
    failed = parallel.first_failure(outcomes)
    if failed is not None:
        return _fail("run", failed.message, failed.exit_code)
    replications = parallel.by_replication(jobs, outcomes)
    results = replications[0]
    report = build_replicated_report(replications, file=args.trace)
    print(to_json(report) if args.json else to_text(report))
    if args.plot is not None:
        for path in write_plots(results, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _tune(args: argparse.Namespace) -> int:
    import json

    from kfrouter.policies.registry import available_policies, load_policy
    from kfrouter.router.core.errors import ConfigError
    from kfrouter.sim.report import BASELINE, build_report, to_text
    from kfrouter.sim.runner import RunConfig, SimError, run_trace
    from kfrouter.sim.trace import TraceError, TraceReader
    from kfrouter.sim.tune import (
        NUMERIC_METRICS,
        TuneError,
        best_index,
        default_jobs,
        grid,
        parse_target,
        parse_vary,
        run_grid,
        table,
    )

    installed = [n for n, _ in available_policies()]
    try:
        targets = [parse_target(x) for x in args.target]
        varies = [parse_vary(x, installed) for x in args.vary]
        objective = args.maximize or args.minimize or "wait_mean_s"
        if objective not in NUMERIC_METRICS:
            raise TuneError(
                f"--minimize/--maximize: unknown metric {objective!r} (one of {', '.join(NUMERIC_METRICS)})"
            )
        jobs = default_jobs() if args.jobs is None else args.jobs
        if jobs < 1:
            raise TuneError(f"--jobs must be >= 1, got {jobs}")
        load_policy(args.policy)
        if not Path(args.trace).is_file():
            raise TuneError(f"{args.trace}: no such file")
        with TraceReader(args.trace) as reader:
            seed = args.seed if args.seed is not None else (reader.header.seed or 0)
        base = RunConfig(
            policy=args.policy,
            seed=seed,
            overflow_after_s=args.overflow_after,
            preferred_wait_s=args.preferred_wait,
            reservation_timeout_s=args.reservation_timeout,
        )
        settings = grid(base, varies)
        for s in settings:
            load_policy(s.config.policy)  # every option of every policy, before any run
    except (TuneError, ConfigError, TraceError, ValueError) as exc:
        return _fail("tune", str(exc))
    try:
        rows = run_grid(args.trace, settings, jobs)
        best = best_index(rows, targets, objective, maximize=args.maximize is not None)
        report = None
        if best is not None:
            cfgs = [settings[best].config]
            if BASELINE in installed and settings[best].config.policy != BASELINE:
                cfgs.append(RunConfig(**{**settings[best].config.__dict__, "policy": BASELINE}))
            report = build_report([run_trace(args.trace, c) for c in cfgs], file=args.trace)
    except (TraceError, ConfigError, ValueError) as exc:
        return _fail("tune", str(exc))
    except SimError as exc:
        return _fail("tune", str(exc), EXIT_FAILED)
    goal = f"{'highest' if args.maximize else 'lowest'} {objective}"
    if args.json:
        print(
            json.dumps(
                {
                    "targets": [str(t) for t in targets],
                    "objective": {"metric": objective, "maximize": args.maximize is not None},
                    "settings": [
                        {
                            "setting": dict(s.values),
                            "policy": s.config.policy,
                            "meets": all(t.holds(r) for t in targets),
                            "metrics": r,
                        }
                        for s, r in zip(settings, rows, strict=True)
                    ],
                    "best": None if best is None else dict(settings[best].values),
                    "report": report,
                },
                allow_nan=False,
            )
        )
    else:
        print(f"{len(settings)} settings, targets {', '.join(str(t) for t in targets)}, best = {goal}")
        print(table(settings, rows, targets, objective, best))
        print("(* meets the targets, > the best)")
        if best is not None and report is not None:
            print(f"\nbest: {settings[best].label()} (policy {settings[best].config.policy})")
            print(to_text(report))
    if best is None:
        print(f"no setting meets {', '.join(str(t) for t in targets)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _staff(args: argparse.Namespace) -> int:
    import json

    from kfrouter.policies.registry import load_policy
    from kfrouter.router.core.errors import ConfigError
    from kfrouter.sim.plot import PlotUnavailable, require_matplotlib
    from kfrouter.sim.runner import RunConfig, SimError
    from kfrouter.sim.staff import StaffError, parse_target, staff, table, write_plot
    from kfrouter.sim.trace import TraceError, TraceReader

    try:
        target = parse_target(args.target)
        load_policy(args.policy)
        if args.max_sessions is not None and args.max_sessions < 1:
            raise StaffError(f"--max-sessions must be >= 1, got {args.max_sessions}")
        if args.patience_mean is not None and not 0 < args.patience_mean < float("inf"):
            raise StaffError(f"--patience-mean must be a number > 0, got {args.patience_mean}")
        if args.max_rounds < 1:
            raise StaffError(f"--max-rounds must be >= 1, got {args.max_rounds}")
        if args.plot is not None:
            require_matplotlib()
        if not Path(args.trace).is_file():
            raise StaffError(f"{args.trace}: no such file")
        with TraceReader(args.trace) as reader:
            seed = args.seed if args.seed is not None else (reader.header.seed or 0)
        cfg = RunConfig(policy=args.policy, seed=seed, overflow_after_s=args.overflow_after)
        plan = staff(
            args.trace,
            target,
            cfg,
            max_sessions=args.max_sessions,
            patience_mean_s=args.patience_mean,
            max_rounds=args.max_rounds,
        )
    except (StaffError, ConfigError, TraceError, PlotUnavailable, ValueError) as exc:
        return _fail("staff", str(exc))
    except SimError as exc:
        return _fail("staff", str(exc), EXIT_FAILED)
    print(json.dumps(plan.to_dict(), allow_nan=False) if args.json else table(plan))
    if args.plot is not None:
        print(f"wrote {write_plot(plan, args.plot)}", file=sys.stderr)
    return 0 if plan.met else EXIT_FAILED


def _erlang(args: argparse.Namespace) -> int:
    from kfrouter.sim.erlang import erlang_a, erlang_c

    try:
        lam, mu = args.arrival_rate, 1.0 / args.service_mean
        if args.patience_mean is None:
            c = erlang_c(lam, mu, args.agents)
            print(
                f"M/M/{args.agents}: utilization {c.utilization:.4f}, P(wait>0) {c.p_wait:.6f}, "
                f"mean wait {c.mean_wait:.6f} s"
            )
        else:
            a = erlang_a(lam, mu, args.agents, 1.0 / args.patience_mean)
            print(
                f"M/M/{args.agents}+M: P(wait>0) {a.p_wait:.6f}, P(abandon) {a.p_abandon:.6f}, "
                f"mean wait {a.mean_wait:.6f} s, utilization {a.utilization:.4f}"
            )
    except (ValueError, ZeroDivisionError) as exc:
        return _fail("erlang", str(exc))
    return 0
