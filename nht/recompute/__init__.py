"""Content-based recompute under Snakemake, with DVC as the shared store.

The promise: a job reruns when, and only when, the *content* of its inputs, its rule (shell,
params, input list) or the code it runs changed — in the workspace that ran it, and in a fresh
clone after ``dvc pull`` — and a stale or corrupt output is never used or shown as current.

How, with public interfaces only:

* **Records** (:mod:`.records`): every job runs through ``python -m nht.recompute TAG LOG INPUT... -- COMMAND`` (the
  prefix of every rule's shell command), which hashes the job's inputs and its code set *before*
  the command starts, runs it, and after success writes one record per job,
  ``{results_dir}/.records/<stage>.json``, atomically: rule, wildcards, definition hash, code
  fingerprint, md5 of every input and output. Records are per job, never merged or dropped, so a
  failed, partial, concurrent or different-config run cannot lose another job's record.
* **Decisions** (:mod:`.decide`, the one module that decides): a rule declares its input, output
  and params literally; its inputs go through ``unpack(RC.inputs("<rule>", ...))``, an input
  function that reads the records (read-only, so ``-n``, ``--report``, ``--lint`` and ``--summary``
  change nothing), and ``params: nht=RC.tag`` hands the job to its wrapper. The rest of a job's
  definition (outputs, params, shell command) is read from the rule through Snakemake's
  ``rules.<name>``. A *clean* job (record matches definition, code, inputs and outputs) gets its
  inputs wrapped in ``ancient()``, so file times (touch, clone, pull) never rerun it. A *stale*
  job gets one more input, ``.nht/force/<stage>/<digest>`` (new for every new reason to rerun,
  :meth:`.decide.Recompute._stamp`), made by the tiny rule ``nht_force``, so Snakemake runs it and
  everything downstream. A job whose outputs are missing or corrupt but whose recorded versions
  DVC can put back (``dvc ls --show-hash``, ``dvc data status``) is forced the same way, and its
  ``job`` wrapper restores the outputs with ``dvc checkout`` instead of recomputing them.
* **Publishing** (:mod:`.publish`): when a run ends (``onsuccess``/``onerror``), outputs whose
  content no longer matches their record (judged by content and force stamp, never by time) are moved to
  ``.nht/quarantine/``, then ``dvc add`` (DVC's own CLI, under its lock and ours) snapshots the data,
  results and logs directories into DVC's cache for ``dvc push``.

See docs/dvc.md for the table of behaviours and what the tests check.
"""
