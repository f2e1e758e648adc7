"""A study: a grid of train + evaluate cells described by one TOML file, resumable cell by cell.

    [study]
    dataset = "digits"
    epochs = 6                   # default: the dataset's paper epochs; any `ssmbench train` setting by name
    eval_examples = 360          # PGD-10 subset: per-epoch and final
    val_examples = 144           # held-out training images that select best (0: the test subset does)
    aa_examples = 64             # AutoAttack on the first N test images
    seeds = [0, 1, 2]            # default [0]: every cell is trained and evaluated once per seed
    checks = false               # default true; rows of a study without checks say "not checked"
    out = "runs/study-digits"

    [method_params.trades]       # optional: a method's own parameters (default: the paper's)
    beta = 3.0
    [method_params.freeat]
    m = 2

    [study.model]                # optional: overrides of the dataset preset, for every cell
    d_model = 64
    [study.model.mamba]          # optional: overrides for one architecture only
    d_state = 16

    [[grid]]                     # a cartesian product; several [[grid]] tables are unioned
    models = ["s4", "dss"]
    methods = ["st", "pgd"]
    ads = ["none", "tanh"]       # default ["none"]
    attention = [false]          # default [false]
    seeds = [0, 1, 2]            # optional: this grid's seeds (default: the study's)

    >>> config = load_study("studies/digits.toml")
    >>> report = run_study(config, observer)     # trains and evaluates every cell not yet done
    >>> markdown = render_study(config)

A cell (architecture x method x AdS x attention x seed) is the run directory
`<out>/<arch>-<method>-<ads>[-attn]` for seed 0 (the name studies had before seeds existed, so
they stay done) and `<out>/<arch>-<method>-<ads>[-attn]-seed<N>` for seed N. Running it means: train (resuming from the trainer's state
file after an interruption), evaluate best and last with every suite (each evaluation resumes
from its own per-batch state file; when best is the last epoch its results serve both), append the rows to the leaderboard, and write `done.json`
atomically as the very last step, so a rerun skips the cell. A combination that the model zoo
refuses (Mega has no SSM output for AdS to gate) is skipped with the zoo's reason. A cell whose
run fails (RunError: training diverged, an attack ran out of memory) gets a `done.json` saying
so and the study goes on; delete that file to retry the cell.

Several processes may work through one study at once: a cell is run under an exclusive `flock`
on `<run dir>/.lock`, and a runner skips the cells another one holds (the kernel drops the lock
when its holder dies). `shard=(i, k)` restricts a runner to every k-th cell of the grid.

The library never prints: progress goes to a StudyObserver that the CLI renders.

Modules: `config` (the settings and the TOML file), `grid` (cells and shards), `runner` (locks,
markers, running cells), `report` (the markdown).
"""

from ssmbench.study.config import AUTOATTACK_EXAMPLES, Grid, StudyConfig, load_study
from ssmbench.study.grid import Cell, Skipped, expand, parse_shard, select
from ssmbench.study.report import caption, render_study, study_rows
from ssmbench.study.runner import (
    DONE,
    FAILED,
    KINDS,
    LOCK,
    MARKER,
    PENDING,
    RUNNING,
    CellOutcome,
    CellStatus,
    StudyObserver,
    StudyReport,
    plan,
    read_marker,
    run_study,
    status,
)

__all__ = [
    "AUTOATTACK_EXAMPLES",
    "DONE",
    "FAILED",
    "KINDS",
    "LOCK",
    "MARKER",
    "PENDING",
    "RUNNING",
    "Cell",
    "CellOutcome",
    "CellStatus",
    "Grid",
    "Skipped",
    "StudyConfig",
    "StudyObserver",
    "StudyReport",
    "caption",
    "expand",
    "load_study",
    "parse_shard",
    "plan",
    "read_marker",
    "render_study",
    "run_study",
    "select",
    "status",
    "study_rows",
]
