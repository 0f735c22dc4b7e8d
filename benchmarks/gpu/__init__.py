"""The GPU proof as one command: every check and benchmark that needs a GPU, in one device call.

    python -m benchmarks.gpu                       # on a CUDA GPU (an H200): the whole run, <= 8.5 min
    make gpu                                       # the same with the venv's python
    python -m benchmarks.gpu --dry-run             # anywhere, ~1.5 min: every stage at tiny sizes
    python -m benchmarks.gpu --stages env,kernels  # some stages only
    python -m benchmarks.gpu --stage-budget e2e=300 --budget 600   # other time budgets (seconds)

Stages, in order, each a child process with its own time budget: env (GPU, driver, torch, triton,
transformers, commit), install (``pip install --no-deps --no-build-isolation --no-index -e .`` and
an import from another folder), pytest (``pytest -m cuda``: the compiled Triton kernel tests and
any model test marked cuda), kernels (benchmarks/kernels.py: every family at L = 4k/16k/32k, d 64
and 128, causal and not, TFLOP/s and ratio to the floor), e2e (benchmarks/e2e.py's measurement:
GPT-2-small shapes to 32k, Llama-3-8B shapes to 128k, eager recorded as out of memory where it
fails) and views (the cost of each view in `measures.VIEWS`: issue 15's passes, a generation traced
against generating, a model split over devices against one device; those not built yet say so).
Not in the default run: tune (``--stages tune``, 240 s: every kernel family at L = 16k, d 64 and
128, with the compile-report launch shapes, with SKIP_INTERIOR on and autotuned; kernels/autotune.py),
for a session that has the proof and device time left.

A stage that runs past its budget is killed with its whole process group and reported as
'timeout'; what it had written so far is kept and the next stage runs. Each stage writes
``gpu-<stage>.json`` and ``.md`` as it ends (and its log under ``gpu-logs/``), and
``gpu-summary.{json,md}`` is rewritten after every stage, so a run cut short still has its
summary. Results go to benchmarks/results/ (``--out`` elsewhere; ``--dry-run`` writes to a new
temporary folder unless ``--out`` is given, never over committed results). Where the environment
variable OUT is set (the device tool brings that folder back, at most 8 files), the summary and a
``gpu-results.tar.gz`` of everything are copied there after every stage. The commit is read
from git, else from ATTNSCOPE_COMMIT (the device machine has no .git), else 'unknown'.

Budgets of the real run (seconds; benchmarks/gpu/stages.py): env 15, install 30, pytest 150,
kernels 100, e2e 150 plus whatever the earlier stages left unused, views 60: 505 within the default
``--budget 510``, so the whole run fits a 9-minute device call (540 s) with time for Python to start
and the archive to be written. A device call for it, in the repository root there:

    ATTNSCOPE_COMMIT=<sha> PYTHONUNBUFFERED=1 timeout 535 python3 -m benchmarks.gpu   # timeout_s 570

(``timeout`` sends SIGTERM: the stage running is killed and reported 'stopped', the summary kept.)

Dry run: the same stages on the CPU at tiny sizes (the kernels through TRITON_INTERPRET=1, the
pytest stage collects the ``-m cuda`` tests instead of running them, pip with ``--dry-run``);
tests/test_benchmarks_gpu.py runs it, so the command keeps working while no GPU is lent.
"""
