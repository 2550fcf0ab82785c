"""Command line: ``genflow train | sample | inpaint | evaluate | ema | reflow | data prepare``.

Every usage problem (a missing file, an unknown key, a bad value, a run without a
checkpoint) is reported as one line on stderr with exit status 2, before anything is
compiled.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


_WEIGHTS_HELP = ("ema (the EMA trained with the run), raw, or sigma_rel=S (a post-hoc EMA "
                 "written by `genflow ema --sigma-rel S`)")


def _weights(text: str) -> str:
    from genflow.training import parse_weights

    try:
        parse_weights(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "many hosts", "one process per host (or per GPU); without these flags a job described by "
        "the environment (SLURM, a Cloud TPU pod, JAX_COORDINATOR_ADDRESS) is joined, else the "
        "run uses this process's devices")
    group.add_argument("--distributed", action="store_true",
                       help="join the job JAX's cluster detection finds (SLURM, Cloud TPU pods, "
                       "JAX_COORDINATOR_ADDRESS ...) even where genflow does not recognise it")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0, where the coordination service listens")
    group.add_argument("--num-processes", type=int, default=None, metavar="N",
                       help="number of processes in the job")
    group.add_argument("--process-id", type=int, default=None, metavar="I",
                       help="this process's rank, 0 to N-1 (0 prints and writes the logs)")
    group.add_argument("--connect-timeout", type=int, default=300, metavar="SECONDS",
                       help="give up joining the job after this long (default 300)")
    group.add_argument("--heartbeat-timeout", type=int, default=100, metavar="SECONDS",
                       help="declare a silent process dead after this long and stop the job "
                       "(default 100)")


_SUPERVISED = "GENFLOW_SUPERVISED"  # set in the process a supervising `genflow train` starts
_JAX_FATAL = (b"JAX distributed service detected fatal errors", b"coordination_service")
_GLOG_NOISE = (b"*** Check failure stack trace", b"[Gloo] ")


def _in_job(args) -> bool:
    from genflow.training import cluster_in_environment

    return args.coordinator is not None or args.distributed or cluster_in_environment()


def _die_with_parent() -> None:  # Linux: the training process never outlives its supervisor
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _supervise(args) -> int:
    """Run this ``genflow train`` of a multi-process job in a child process and turn the way
    JAX ends a process whose job failed (an abort with a C++ stack trace, when the coordinator
    never answers or another process dies) into one line and an exit status: 2 when the job
    could not be joined, 1 when it was lost while training. Everything else the child writes
    passes through; SIGTERM is passed on (Ctrl-C reaches the child directly)."""
    import os
    import re
    import signal
    import subprocess

    env = {**os.environ, _SUPERVISED: "1", "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "genflow.cli", *args.argv], env=env,
                             stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM,
                                              lambda *_: child.send_signal(signal.SIGTERM)),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    failure, pending = b"", b""
    try:
        while chunk := os.read(child.stderr.fileno(), 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if failure or any(m in line for m in _JAX_FATAL):
                    failure += line + b"\n"  # JAX's own account, summarised below
                elif not any(m in line for m in _GLOG_NOISE):
                    sys.stderr.buffer.write(line + b"\n")
            if b"\r" in pending and not failure:  # a progress bar: show it now
                sys.stderr.buffer.write(pending)
                pending = b""
            sys.stderr.buffer.flush()
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not failure:
        return code if code >= 0 else 128 - code
    text = failure.decode(errors="replace")
    where = args.coordinator or "the environment's coordinator"
    if "RegisterTask" in text or ("Barrier" in text and "heartbeat" not in text):
        print(f"genflow: error: could not join the job at {where} within "
              f"{args.connect_timeout} s; start every process with the same --coordinator and "
              "--num-processes, and check that the host and port are reachable.",
              file=sys.stderr)
        return 2
    lost = re.search(r"stopped sending heartbeats\):\s*([\d,\s]+?)\s*\n", text)
    who = f"process {lost.group(1).strip()}" if lost else "another process"
    workdir = Path(args.workdir or Path("runs") / Path(args.config).stem)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    kept = (f"the checkpoint of step {steps[-1]} in {workdir / 'checkpoints'} is kept"
            if steps else "no checkpoint had been written yet")
    print(f"genflow: error: the job lost {who} (no heartbeat for {args.heartbeat_timeout} s) "
          f"and this process stopped; {kept}: rerun every process with the same command to "
          "resume.", file=sys.stderr)
    return 1


def _join_job(args) -> None:
    """Join a multi-process job if the flags or the environment describe one; before any
    device is used."""
    from genflow.training import initialize_distributed

    if args.connect_timeout < 1 or args.heartbeat_timeout < 1:
        raise UsageError("--connect-timeout and --heartbeat-timeout must be positive.")
    initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                           timeout=args.connect_timeout, heartbeat_timeout=args.heartbeat_timeout,
                           from_environment=args.distributed)


def _build_parser() -> argparse.ArgumentParser:
    from genflow.config import COMPUTE_DTYPES, help_list

    parser = _Parser(prog="genflow", description="Diffusion and flow generative models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tr = sub.add_parser("train", help="train a model from a config file (resumes if possible)")
    tr.add_argument("--config", required=True, help="path to a configs/NAME.py file")
    tr.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
    tr.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.num_steps=2000 (repeatable)",
    )
    tr.add_argument("--fresh", action="store_true", help="discard an existing run in --workdir")
    tr.add_argument("--fork", default=None, metavar="NEW_WORKDIR",
                    help="copy --workdir's latest checkpoint to NEW_WORKDIR and train it there "
                    "with the new settings (a resume may change only the number of steps and "
                    "the logging, checkpoint and sample cadence)")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_distributed_flags(tr)

    sa = sub.add_parser("sample", help="draw samples from a trained run")
    sa.add_argument("--workdir", required=True, help="run directory written by `genflow train`")
    sa.add_argument(
        "--sampler", default=None,
        help=f"sampler name (default: the config's): {help_list('solver')}",
    )
    sa.add_argument(
        "--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
        help="a sampler option, e.g. --option variant=taylor or --option rtol=1e-3 "
        "(repeatable; an unknown option is an error that lists the sampler's options)",
    )
    sa.add_argument("--steps", type=int, default=None,
                    help="number of solver steps (model evaluations for singlestep DPM-Solver)")
    sa.add_argument("--threshold", type=float, default=None, metavar="QUANTILE",
                    help="dynamic thresholding of x0_hat at this quantile, e.g. 0.995 (0: off)")
    sa.add_argument("--grid", default=None, help=f"time grid: {help_list('grid')}")
    sa.add_argument("--t-start", type=float, default=None,
                    help="start of the time grid (default 1; e.g. 0.999 for a log-SNR grid on a "
                    "path whose log-SNR is infinite at t = 1, such as rectified flow)")
    sa.add_argument("--num", type=int, default=None, help="number of samples")
    sa.add_argument("--label", type=int, default=None,
                    help="class-conditional models: the class to draw (default: every class in "
                    "turn, one grid row each)")
    sa.add_argument("--guidance", type=float, default=None, metavar="SCALE",
                    help="class-conditional models: classifier-free guidance scale 1 + w "
                    "(1: the conditional model alone; default: the config's)")
    sa.add_argument("--seed", type=int, default=None, help="random seed")
    sa.add_argument("--weights", type=_weights, default="ema", help=_WEIGHTS_HELP)
    sa.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32",
                    help="the network's arithmetic while sampling (the sampler stays float32)")
    sa.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier --out instead of refusing")
    sa.add_argument(
        "--out", default=None,
        help="output path; FILE.png and FILE.npz are written (default: WORKDIR/samples, or samples_001, samples_002, ... when taken)",
    )
    ip = sub.add_parser(
        "inpaint",
        help="fill in the masked pixels of data-set images (or colour their gray levels) with a "
        "trained image run (Gaussian paths)",
    )
    ip.add_argument("--workdir", required=True, help="run directory written by `genflow train`")
    ip.add_argument(
        "--mask", default="bottom",
        help="the part to generate: top, bottom, left, right (halves), center (the middle "
        "quarter), random (half of the pixels), color (colour the gray level of RGB images), or "
        "FILE.npy with 1 where a pixel is known, shaped (H, W) or (H, W, C) (default: bottom)",
    )
    ip.add_argument("--num", type=int, default=10, help="number of images (default 10)")
    ip.add_argument("--split", default="test", help="data set split to take them from")
    ip.add_argument("--reconstruction-weight", type=float, default=0.0, metavar="W",
                    help="reconstruction guidance weight (0: plain replacement; e.g. 10)")
    ip.add_argument("--label", type=int, default=None,
                    help="class-conditional models: condition on this class (default: the "
                    "null class, i.e. unconditional)")
    ip.add_argument("--sampler", default=None, help="a fixed-step sampler (default: the config's)")
    ip.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                    help="a sampler option (repeatable)")
    ip.add_argument("--steps", type=int, default=None, help="number of solver steps")
    ip.add_argument("--grid", default=None, help=f"time grid: {help_list('grid')}")
    ip.add_argument("--seed", type=int, default=None, help="random seed")
    ip.add_argument("--weights", type=_weights, default="ema", help=_WEIGHTS_HELP)
    ip.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32",
                    help="the network's arithmetic (the sampler stays float32)")
    ip.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier --out instead of refusing")
    ip.add_argument("--out", default=None,
                    help="output path; FILE.png (rows: originals, inputs, results) and FILE.npz "
                    "are written (default: WORKDIR/inpaint)")
    ip.set_defaults(threshold=None, t_start=None, guidance=None)

    ev = sub.add_parser(
        "evaluate",
        help="likelihood and sample-quality metrics of a trained run (appended to its "
        "metrics.jsonl)",
    )
    ev.add_argument("--workdir", required=True, help="run directory written by `genflow train`")
    ev.add_argument("--metrics", default="nll,sw2",
                    help="comma-separated: nll (nats/dim on 2-D data, bits/dim on images), sw2, "
                    "mmd, energy, sharpness (toy sets with an exact density), gap (ODE vs SDE samples and the Fokker-Planck residual, "
                    "plotted to WORKDIR/evaluate_gap.png), fd, kid (images; FID/KID with "
                    "--inception, else the digits' fallback features) (default: nll,sw2)")
    ev.add_argument("--num", type=int, default=None,
                    help="samples and held-out points (default: the config's num_samples; "
                    "images: 1000 samples against the test split)")
    ev.add_argument("--seed", type=int, default=0, help="random seed")
    ev.add_argument("--weights", type=_weights, default="ema", help=_WEIGHTS_HELP)
    ev.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32",
                    help="the network's arithmetic while sampling (the sampler stays float32)")
    ev.add_argument("--probes", type=int, default=1,
                    help="Hutchinson probes per image for nll on images (default 1)")
    ev.add_argument("--inception", default=None, metavar="FILE.npz",
                    help="FID Inception-v3 weights (see scripts/convert_fid_inception.py)")

    em = sub.add_parser(
        "ema",
        help="EDM2's post-hoc EMA: reconstruct the EMA of any sigma_rel from the snapshots of "
        "the power-function EMA profiles a run stored (train.ema_profiles, ema_snapshot_every)",
    )
    em.add_argument("--workdir", required=True, help="run directory written by `genflow train`")
    em.add_argument("--sigma-rel", dest="sigma_rel", type=float, action="append", required=True,
                    help="relative standard deviation of the EMA to build, e.g. 0.05 "
                    "(repeatable)")
    em.add_argument("--step", type=int, default=None,
                    help="the training step to reconstruct at (default: the latest snapshot)")

    rf = sub.add_parser(
        "reflow",
        help="rectified flow's reflow: couple noise with the run's ODE samples, retrain on them",
    )
    rf.add_argument("--workdir", required=True, help="the trained run to reflow")
    rf.add_argument("--out", required=True, help="the new run directory (pairs.npz is kept there)")
    rf.add_argument("--pairs", type=int, default=50_000, help="number of (noise, sample) pairs")
    rf.add_argument("--sampler", default="heun", help="ODE solver for the pairs (deterministic)")
    rf.add_argument("--steps", type=int, default=100, help="solver steps for the pairs")
    rf.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override the new run's config, e.g. --set train.num_steps=5000 (repeatable)",
    )
    rf.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    rf.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    da = sub.add_parser("data", help="image data sets (TFDS array_record)")
    da_sub = da.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    pr = da_sub.add_parser(
        "prepare",
        help="prepare a data set once: digits/digits16 offline from scikit-learn; any TFDS name "
        "(mnist, cifar10, ...) downloads and converts it, which needs `pip install -e "
        "'.[tfds]'` in the genflow checkout (TensorFlow, only for this step)",
    )
    pr.add_argument("name", help="digits, digits16, or a TFDS catalogue name such as mnist")
    pr.add_argument("--data-dir", default=None,
                    help="TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    return parser


def _run_data(args) -> int:
    from genflow.data import prepare_dataset

    try:
        path = prepare_dataset(args.name, args.data_dir)
    except ImportError as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    print(f"prepared {args.name} in {path}")
    return 0



# ---------------------------------------------------------------------------------- train
def _run_train(args) -> int:
    from genflow import config as cfg
    from genflow.training import check_resume_changes, check_workdir_compatible

    if not Path(args.config).is_file():
        raise UsageError(f"config file not found: {args.config}")
    if _in_job(args) and os.environ.get(_SUPERVISED) != "1":
        from genflow.training import check_distributed_args

        check_distributed_args(args.coordinator, args.num_processes, args.process_id)
        return _supervise(args)
    _join_job(args)  # before anything touches a device (loading a config computes)
    config = cfg.apply_overrides(cfg.load_config_file(args.config), args.overrides)
    workdir = Path(args.workdir or Path("runs") / Path(args.config).stem)
    if args.fork is not None:
        if args.fresh:
            raise UsageError("--fork starts a new directory from --workdir's latest checkpoint; "
                             "--fresh would discard it: give one of them.")
        from genflow.training import fork_run

        step = fork_run(config, workdir, args.fork)
        print(f"forked step {step} of {workdir} into {args.fork}")
        workdir = Path(args.fork)
    elif not args.fresh:
        check_workdir_compatible(config, workdir)
        check_resume_changes(config, workdir)
    import jax

    if jax.process_index() == 0:
        where = (f"{jax.device_count()} {jax.devices()[0].platform} devices"
                 + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))
        print(f"training {type(config.process).__name__} on {config.data.name} in {workdir} "
              f"({where})")
    return _train_until_done(config, workdir, fresh=args.fresh, progress=not args.no_progress)


def _train_until_done(config, workdir: Path, *, fresh: bool, progress: bool) -> int:
    """Train; on Ctrl-C or SIGTERM say where the checkpoint is and return 130."""
    from genflow.run import train
    from genflow.training import CheckpointError, NonFiniteTraining

    try:
        train(config, workdir, fresh=fresh, progress=progress)
    except NonFiniteTraining as exc:
        print(f"genflow: error: {exc}", file=sys.stderr)
        return 3
    except CheckpointError as exc:
        print(f"genflow: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        saved = f"saved a checkpoint at step {exc.step}" if hasattr(exc, "step") else (
            "the last finished checkpoint is intact"
        )
        print(f"interrupted; {saved} in {workdir / 'checkpoints'}. Run the same command to "
              "resume.", file=sys.stderr)
        return 130
    import jax

    if jax.process_index() == 0:
        print(f"done: {config.train.num_steps} steps; checkpoints in {workdir}/checkpoints")
    return 0


# ---------------------------------------------------------------------------------- reflow
def _run_reflow(args) -> int:
    from genflow import config as cfg
    from genflow.run import check_trained, load_run_config, open_run

    workdir, out = Path(args.workdir), Path(args.out)
    config = load_run_config(workdir)
    check_trained(workdir)
    if out.resolve() == workdir.resolve():
        raise UsageError("--out must be a new directory, not the run being reflowed.")
    pairs_path = (out / "pairs.npz").resolve()
    if (out / "config.json").exists() and not pairs_path.is_file():
        raise UsageError(f"{out} already holds a run that is not a reflow; choose a new --out.")
    if args.pairs < 1 or args.steps < 1:
        raise UsageError("--pairs and --steps must be positive.")
    solver = cfg.REGISTRY.build("solver", args.sampler)
    if getattr(solver, "stochastic", True):
        raise UsageError(f"--sampler {args.sampler} is stochastic; reflow needs an ODE solver.")
    if not config.resolved.method.coupled_pairs:
        raise UsageError(f"reflow couples noise with samples of a Gaussian path; {workdir} trains "
                         f"{cfg.REGISTRY.name_of('process', config.process)}.")
    if (out / "config.json").is_file():  # an interrupted reflow: keep its pairs, resume training
        config = cfg.load_config_json(out / "config.json")
        print(f"resuming the reflow in {out} (pairs: {pairs_path})")
        return _train_until_done(config, out, fresh=False, progress=not args.no_progress)
    import numpy as np

    run = open_run(workdir, config=config)
    print(f"coupling {args.pairs} noise draws with {args.sampler} x {args.steps} steps "
          f"(checkpoint step {run.step})")
    x0, x1 = run.couple(args.pairs, solver, num_steps=args.steps, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    tmp = pairs_path.with_suffix(".tmp.npz")
    np.savez(tmp, x0=x0, x1=x1)
    tmp.replace(pairs_path)  # atomic: a crash never leaves a half-written pairs file
    config = cfg.apply_overrides(config, [f"data.pairs={pairs_path}", *args.overrides])
    print(f"wrote {pairs_path}; training the reflowed model in {out}")
    code = _train_until_done(config, out, fresh=False, progress=not args.no_progress)
    if code == 0:
        print(f"sample with `genflow sample --workdir {out}`")
    return code


# ---------------------------------------------------------------------------------- sample
_FLAGS = {"num_steps": "--steps", "num_samples": "--num", "threshold": "--threshold",
          "t_start": "--t-start", "label": "--label", "guidance": "--guidance",
          "solver_options": "--option", "sampler": "--sampler", "grid": "--grid"}


def _sample_config(args):
    """The run's config with the sample flags applied, checked before any compute."""
    from genflow.config import ConfigError, replace_sample
    from genflow.run import check_trained, load_run_config

    workdir = Path(args.workdir)
    config = load_run_config(workdir)
    sc = config.sample
    changes = {
        "sampler": args.sampler, "num_steps": args.steps, "grid": args.grid,
        "num_samples": getattr(args, "num", None), "seed": args.seed,
        "threshold": args.threshold, "t_start": args.t_start, "label": args.label,
        "guidance": args.guidance,
    }
    if args.options or args.sampler not in (None, sc.sampler):
        # The config's options belong to the config's sampler.
        same = args.sampler in (None, sc.sampler)
        options = dict(sc.solver_options) if same else {}
        from genflow.config import parse_options

        options.update(parse_options(",".join(args.options)))
        changes["solver_options"] = options
    changes = {k: v for k, v in changes.items() if v is not None}
    try:
        config = replace_sample(config, **changes) if changes else config
    except ConfigError as exc:
        msg = str(exc)
        for field, flag in _FLAGS.items():
            msg = msg.replace(f"sample.{field}", flag)
        raise UsageError(msg) from None
    check_trained(workdir)
    return config, workdir


def _output_base(out: str | None, default: Path, *, overwrite: bool) -> Path:
    """Where ``FILE.npz`` / ``FILE.png`` go, checked before anything is loaded: ``--out``
    (refused if it would overwrite an earlier result, unless ``--overwrite``) or ``default``,
    then ``default_001``, ``default_002``, ... so that no earlier result is replaced."""
    from genflow.run import output_paths

    def taken(base: Path) -> bool:
        return any(p.exists() for p in output_paths(base))

    if out is None:
        base, n = default, 0
        while taken(base) and not overwrite:
            n += 1
            base = default.with_name(f"{default.name}_{n:03d}")
    else:
        base = Path(out)
        if taken(base) and not overwrite:
            raise UsageError(f"{output_paths(base)[0]} exists already; choose another --out or "
                             "pass --overwrite.")
    folder = output_paths(base)[0].parent
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"cannot write {output_paths(base)[0]}: {parent} is a file.")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"cannot write {output_paths(base)[0]}: {parent} is not "
                                 "writable.")
            break
    return base


def _run_sample(args) -> int:
    config, workdir = _sample_config(args)
    out = _output_base(args.out, workdir / "samples", overwrite=args.overwrite)
    from genflow.run import open_run, sampling, toy_quality

    run = open_run(workdir, weights=args.weights, config=config, compute_dtype=args.dtype)
    sc = config.sample
    options = ",".join(f"{k}={v}" for k, v in sc.solver_options.items())
    options = f" [{options}]" if options else ""
    print(f"sampling {sc.num_samples} points with {sampling(config).description}{options} "
          f"({args.weights} weights, checkpoint step {run.step})")
    samples = run.sample(config=config)
    reference = None if config.data.images else run.reference(sc.num_samples, sc.seed)
    npz, png = samples.save(out, reference=reference)
    print(f"wrote {npz} and {png} (NFE {samples.nfe})")
    if reference is not None:
        for line in toy_quality(run, samples, reference):
            print(line)
    return 0


# ---------------------------------------------------------------------------------- evaluate
def _run_evaluate(args) -> int:
    import json
    import time

    from genflow import evaluate
    from genflow.run import check_trained, load_run_config
    from genflow.training import METRICS_FILE

    workdir = Path(args.workdir)
    config = load_run_config(workdir)
    check_trained(workdir)
    if args.probes < 1:
        raise UsageError(f"--probes must be >= 1, got {args.probes}.")
    metrics = evaluate.parse_metrics(args.metrics)
    evaluate.check_metrics(config, metrics, args.inception)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(metrics), unit="metric", dynamic_ncols=True)
    results, info = evaluate.evaluate_run(
        workdir, metrics, num=args.num, seed=args.seed, weights=args.weights,
        compute_dtype=args.dtype, num_probes=args.probes, inception=args.inception,
        progress=lambda message: (bar.set_description(message), bar.update(0)),
    )
    bar.update(len(metrics))
    bar.close()
    print(f"checkpoint step {info['checkpoint_step']} ({args.weights} weights)"
          + (f"; {info['num_samples']} samples with {info['sampler']}, NFE {info['nfe']}"
             if "num_samples" in info else ""))
    print("\n| metric | value | floor (data vs data) |\n|---|---|---|")
    for r in results.values():
        error = f" ± {r['std_error']:.4f}" if "std_error" in r else ""
        error += f" (std over subsets {r['std']:.4g})" if "std" in r else ""
        unit = f" {r['unit']}" if "unit" in r else ""
        floor = f"{r['floor']:.4g}" if "floor" in r else "-"
        print(f"| {r['label']} | {r['value']:.4g}{unit}{error} | {floor} |")
    if "gap" in results:
        from genflow.plotting import curves_png

        gap = results["gap"]
        plot = curves_png(workdir / "evaluate_gap.png", gap["residual_times"],
                          {"RMS Fokker-Planck residual (normalized)": gap["residual_rms"]},
                          log_x=True, title=f"ODE-SDE gap: sw2 {gap['value']:.4f}, "
                          f"floor {gap['floor']:.4f}")
        print(f"wrote {plot}")
    with open(workdir / METRICS_FILE, "a") as log:
        log.write(json.dumps({"evaluate": results, **info, "seed": args.seed,
                              "time": time.time()}) + "\n")
    print(f"appended to {workdir / METRICS_FILE}")
    return 0


# ---------------------------------------------------------------------------------- inpaint
def _inpaint_mask(spec: str, shape: tuple[int, int, int], seed: int):
    """The known-pixel mask of ``--mask`` shaped ``(H, W, C)``, or ``None`` for colorization."""
    import numpy as np

    from genflow.run import REGION_MASKS, region_mask

    h, w, c = shape
    if spec == "color":
        if c != 3:
            raise UsageError(f"--mask color colours RGB images; this run's images have {c} "
                             "channel(s). Use a region mask such as --mask bottom.")
        return None
    if spec in REGION_MASKS:
        return region_mask(spec, shape, seed)
    path = Path(spec)
    if path.suffix != ".npy" or not path.is_file():
        raise UsageError(f"--mask {spec!r} is neither one of {', '.join(REGION_MASKS)}, color "
                         "nor an existing FILE.npy.")
    loaded = np.load(path, allow_pickle=False)
    if loaded.ndim == 2:
        loaded = loaded[..., None]
    if loaded.shape not in ((h, w, 1), (h, w, c)) or not np.isin(loaded, (0, 1)).all():
        raise UsageError(f"--mask {spec}: expected 0/1 values shaped ({h}, {w}) or ({h}, {w}, "
                         f"{c}) for this run's {h}x{w}x{c} images, got shape {loaded.shape}.")
    return np.broadcast_to(loaded, (h, w, c)).astype(np.float32)


def _run_inpaint(args) -> int:
    import dataclasses

    from genflow.run import check_inpainting, open_run
    from genflow.training import data_shape_of, image_batches

    config, workdir = _sample_config(args)
    check_inpainting(config, workdir)
    if args.reconstruction_weight < 0:
        raise UsageError("--reconstruction-weight must be >= 0 (0: plain replacement), got "
                         f"{args.reconstruction_weight}.")
    classes = config.model.num_classes
    if args.label is not None and not (classes and 0 <= args.label < classes):
        raise UsageError(f"--label needs a class-conditional run and a class in 0..{classes - 1}"
                         if classes else "--label needs a class-conditional run.")
    shape = data_shape_of(config)
    mask = _inpaint_mask(args.mask, shape, config.sample.seed)
    out = _output_base(args.out, workdir / "inpaint", overwrite=args.overwrite)

    import numpy as np

    from genflow.plotting import image_grid_png
    from genflow.run import output_paths

    data = dataclasses.replace(config.data, batch_size=args.num, split=args.split,
                               random_flip=False)
    batch = image_batches(dataclasses.replace(config, data=data)).batch(0)
    x, labels = np.asarray(batch["x"]), np.asarray(batch["label"])
    run = open_run(workdir, weights=args.weights, config=config, compute_dtype=args.dtype)
    sc = config.sample
    what = "colouring" if mask is None else f"inpainting ({args.mask})"
    print(f"{what} {args.num} {args.split} images with {sc.sampler}, {sc.num_steps} steps "
          f"(checkpoint step {run.step})")
    result = run.inpaint(x, mask, label=args.label, reconstruction_weight=args.reconstruction_weight)
    filled = np.asarray(result.x)
    shown = np.broadcast_to(x.mean(axis=-1, keepdims=True), x.shape) if mask is None else \
        np.where(mask == 1, x, 0.0)
    rows = [np.asarray(a)[i: i + 10] for i in range(0, args.num, 10) for a in (x, shown, filled)]
    npz, png = output_paths(out)
    npz.parent.mkdir(parents=True, exist_ok=True)
    image_grid_png(png, np.clip(np.concatenate(rows), -1.0, 1.0), nrow=min(10, args.num))
    np.savez(npz, original=x, result=np.clip(filled, -1.0, 1.0), result_raw=filled,
             labels=labels, mask=np.ones(shape, np.float32) if mask is None else mask,
             nfe=int(result.nfe), sampler=sc.sampler, num_steps=sc.num_steps, step=run.step,
             reconstruction_weight=args.reconstruction_weight)
    if mask is not None:
        kept = bool(np.array_equal(filled[:, mask == 1], x[:, mask == 1]))
        print(f"known pixels kept exactly: {kept}")
    print(f"wrote {npz} and {png} (NFE {int(result.nfe)})")
    return 0


# ---------------------------------------------------------------------------------- ema
def _run_ema(args) -> int:
    from genflow.run import check_trained, load_run_config
    from genflow.training import posthoc_ema

    workdir = Path(args.workdir)
    load_run_config(workdir)
    check_trained(workdir)
    for sigma_rel in args.sigma_rel:
        result = posthoc_ema(workdir, sigma_rel, step=args.step)
        print(f"sigma_rel {sigma_rel:g} at step {result.step}: {result.num_snapshots} snapshots "
              f"of the profiles {', '.join(f'{s:g}' for s in result.profiles)}, kernel residual "
              f"{result.residual:.1e} (relative L2); wrote {result.path}")
        print(f"  sample it with `genflow sample --workdir {workdir} --weights "
              f"sigma_rel={sigma_rel:g}`")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genflow`` console script."""
    parser = _build_parser()
    commands = {"train": _run_train, "reflow": _run_reflow, "data": _run_data,
                "inpaint": _run_inpaint, "evaluate": _run_evaluate, "sample": _run_sample,
                "ema": _run_ema}
    from genflow.config import ConfigError

    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return commands[args.command](args)
    except (UsageError, ConfigError) as exc:
        # One line, whatever the message quotes back (a value typed with a newline in it).
        text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"genflow: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
